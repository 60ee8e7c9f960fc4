"""benchmarks/ocl2_step.py runs end to end (it once broke silently when ER began reading the experience's index)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_ocl2_step_benchmark_times_er_scr_and_pcr(capsys):
    from benchmarks import ocl2_step

    rows = ocl2_step.main(["--only", "er,scr,pcr", "--steps", "1", "--rounds", "1", "--warm", "2", "--nf", "4"])
    labels = [r[0] for r in rows]
    assert labels[0] == "er" and "scr" in labels and "pcr" in labels and all(t > 0 for _, t in rows)
    assert "| runner | ms / step |" in capsys.readouterr().out
