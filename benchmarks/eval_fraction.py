"""Evaluation share of one PEFT run on the reduced CLINC150 benchmark (runs/strategies2-clinc150-minilm.yaml,
one seed):

    python benchmarks/eval_fraction.py finetune-lora OUT_DIR [--eval-amp]

prints wall, train and eval time, eval / (train + eval) and the accuracies.  ``--eval-amp`` evaluates under
bf16 autocast on the CPU (``protocol.eval_amp``).  Text test sets are evaluated in length buckets
(cl/train/evaluate.py) in both cases."""
import json, sys, time, torch
torch.set_num_threads(1)
import cl
strategy = sys.argv[1]; out = sys.argv[2]; eval_amp = "--eval-amp" in sys.argv[3:]
S = {"finetune-lora": {"name": "finetune-lora", "optimizer": "adam", "lr": 0.005},
     "color": {"name": "color", "optimizer": "adam", "lr": 0.005}}[strategy]
t0 = time.perf_counter()
r = cl.fit(strategy=S, scenario={"name": "clinc150", "train_per_class": 8, "test_per_class": 4, "shuffle_domains": True},
           backbone="minilm", protocol={"name": "offline", "epochs": 2, "batch_size": 16, "eval_batch_size": 512,
                                        "checkpoint": False, "eval_amp": eval_amp}, seed=0, out=out, force=True)
m = r.raw["metrics"]
print(json.dumps({"strategy": strategy, "eval_amp": eval_amp, "status": r.status, "process_s": time.perf_counter() - t0,
                  **{k: m.get(k) for k in ("wall_time", "train_time", "eval_time", "avg_acc", "forgetting")},
                  "eval_share": m["eval_time"] / (m["train_time"] + m["eval_time"]),
                  "eval_fraction": m["eval_time"] / m["wall_time"]}))
