#!/usr/bin/env python
"""Mutation testing of the modules whose bugs change results, with cosmic-ray, one module at a time.

Each module is mutated in a scratch copy of the working tree (never in place) and every mutant runs only
the tests that exercise that module (``MODULES`` below), so a mutant costs seconds, not the full suite.
Too slow for CI (minutes to tens of minutes a module on 2 cores): run it by hand after changing a module
or its tests, and record the scores and the surviving mutants in docs/testing.md.

    pip install -e '.[mutation]'                # cosmic-ray, pinned
    python scripts/mutation.py --list           # modules, their test files, last scores
    python scripts/mutation.py --module metrics # one module (several: --module a --module b)
    python scripts/mutation.py --all            # every module
    python scripts/mutation.py --module metrics --survivors   # after adding tests: re-run the survivors only
    python scripts/mutation.py --report         # the score table of what was run, from the sessions

Results go to ``--out`` (default ``$CL_MUTATION_OUT`` or ``/tmp/cl-mutation``, outside the repository): per module a cosmic-ray session
(``<module>.sqlite``, resumable: an interrupted run continues where it stopped), ``<module>.json``
(counts and every surviving mutant with its diff) and ``summary.md`` (the table).  Cosmic-ray must be
importable by the Python running this script; the tests run with ``--python`` (default: the same one).

Which mutants count: cosmic-ray's operators, less the implausible ones in ``EXCLUDE_OPERATORS``
(cross-kind operator swaps such as ``+`` -> ``<<``, comparisons turned into ``is``) and less mutations
inside type annotations (never evaluated: every module has ``from __future__ import annotations``).
A module entry may restrict mutation to some functions (``functions``: qualified-name prefixes).
Surviving mutants listed in ``EQUIVALENT`` (same behaviour, by reason) are reported apart; the score is
killed / (killed + surviving non-equivalent), timeouts count as killed (as cosmic-ray does).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = "cosmic-ray==8.7.0"  # keep in step with the `mutation` extra of pyproject.toml


@dataclass
class Module:
    path: str
    tests: list[str]
    conftest: bool = True  # False: the tests need no fixture from tests/conftest.py (which imports torch)
    functions: list[str] = field(default_factory=list)  # only mutate these (qualified-name prefixes); [] = all
    note: str = ""


# with -x the first failing test ends a mutant's run: the fast, targeted files come first
ENGINE_TESTS = ["tests/test_mutation_engine.py", "tests/test_engine.py", "tests/test_resume.py"]
# test_resume.py (14 s) re-runs whole streams: left out where the faster files exercise the module fully
FAST_ENGINE_TESTS = ["tests/test_mutation_lifecycle.py", "tests/test_mutation_engine.py", "tests/test_engine.py"]
ONLINE_TESTS = ["tests/test_mutation_lifecycle.py", "tests/test_mutation_engine.py", "tests/test_online.py",
                "tests/test_engine.py"]

_RP, _RG, _RI = "tests/test_baselines_replay.py", "tests/test_baselines_reg.py", "tests/test_baselines_isolation.py"
# the tests of test_ptm2.py / test_ptm3.py that run each of mut-ptm2's modules (fast ones first)
_RANPAC = ("ranpac_ridge_equals_least_squares_on_the_augmented_system",
           "ranpac_lambda_is_the_grid_value_with_the_smallest_held_out_mse",
           "ranpac_accumulates_over_tasks_and_resolves_old_classes", "bad_config_is_a_config_error_naming_field_and_choices",
           "task_free_runs_are_refused_with_the_field_named", "ranpac_with_first_task_lora_resumes_exactly",
           "vit_backbone_runs_and_adapts_the_attention")
_FECAM = ("fecam_distance_is_the_hand_computed_shrunk_normalised_mahalanobis",
          "fecam_skips_tukey_on_signed_features_and_masks_unseen_classes",
          "bad_config_is_a_config_error_naming_field_and_choices", "task_free_runs_are_refused_with_the_field_named")

MODULES: dict[str, Module] = {
    # -- numbers: metrics and the shared pieces strategies hold
    "metrics": Module("cl/core/metrics.py", ["tests/test_mutation_metrics.py", "tests/test_metrics.py"], conftest=False),
    "buffers": Module("cl/models/buffers.py", ["tests/test_mutation_buffers.py", "tests/test_buffers.py"]),
    "heads": Module("cl/models/heads.py", ["tests/test_mutation_heads.py"]),
    "prototypes": Module("cl/models/prototypes.py", ["tests/test_mutation_heads.py"]),
    # -- the run lifecycle and both loops (not measured yet: see docs/testing.md)
    "engine": Module("cl/train/engine.py", ENGINE_TESTS,
                     functions=["Run.train_experience", "Run.evaluated", "Run.evaluate", "Run.checkpoint",
                                "Run.restore", "Run.finish", "Run.execute", "Run._execute_locked", "seed_everything"],
                     note="run lifecycle phases"),
    "offline": Module("cl/train/offline.py", FAST_ENGINE_TESTS, note="offline loop"),
    "evaluate": Module("cl/train/evaluate.py", FAST_ENGINE_TESTS, note="evaluation"),
    "checkpoint": Module("cl/train/checkpoint.py", ["tests/test_mutation_lifecycle.py", "tests/test_mutation_engine.py",
                                                    "tests/test_reliability_state.py::test_not_plain_state_is_an_error_naming_it",
                                                    "tests/test_reliability_state.py::"
                                                    "test_checkpoint_loads_with_weights_only_and_holds_declared_state_once"],
                         note="checkpoint save/load (test_resume.py left out: 14 s, its cases are in the first two files)"),
    "online": Module("cl/train/online.py", ONLINE_TESTS, functions=["_History", "OnlineLoop"],
                     note="online loop (not PhaseTimer: wall-clock phase timings, no checkable value)"),
    # test_reliability_faults.py whole takes ~160 s (two sweeps and two `cl run` as subprocesses, W&B
    # timeouts): only its tests of results.py, after the hand-built cases of test_mutation_results.py
    "results": Module("cl/train/results.py", ["tests/test_mutation_results.py", "tests/test_mutation_sweep.py"] +
                      [f"tests/test_reliability_faults.py::{t}" for t in (
                          "test_corrupt_result_is_moved_aside_and_recomputed", "test_a_locked_run_is_skipped_then_computed",
                          "test_a_killed_holder_leaves_no_stale_lock", "test_disk_full_at_checkpoint_leaves_no_tmp_and_says_so",
                          "test_disk_full_everywhere_never_points_at_a_missing_file", "test_read_only_results_folder",
                          "test_ctrl_c_is_interrupted_and_resumable", "test_result_files_follow_the_umask")],
                      note="finished-run detection, outcome files, run locks"),
    # test_sweep_exec.py (SIGKILL, ray, lost workers: ~40 s) left out of the sweep modules: test_mutation_sweep.py
    # drives run_status / run_sweep through every status
    "sweep-status": Module("cl/sweeps/status.py", ["tests/test_mutation_sweep.py::test_run_status_of_each_kind_of_run_folder",
                                                   "tests/test_mutation_sweep.py"],
                           functions=["run_status"], note="status logic"),
    "sweep-runner": Module("cl/sweeps/runner.py", ["tests/test_mutation_sweep.py::test_run_sweep_statuses_of_a_failed_run",
                                                   "tests/test_mutation_sweep.py"],
                           functions=["run_sweep"], note="which runs a sweep runs"),
    "settings": Module("cl/data/settings.py", ["tests/test_mutation_settings.py", "tests/test_settings.py", "tests/test_scenarios.py"]),
    # -- strategies
    "er": Module("strategies/er.py", ["tests/test_mutation_strategies.py", "tests/test_strategies_er_family.py",
                                      "tests/test_engine.py::test_er_replays_only_after_the_first_step"]),
    "er_ace": Module("strategies/er_ace.py", ["tests/test_mutation_strategies.py", "tests/test_strategies_er_family.py"]),
    "uer": Module("strategies/uer.py", ["tests/test_mutation_strategies.py::test_uer_defaults_and_cosine_temperature",
                                        "tests/test_strategies_er_family.py"]),  # the other UER tests are there
    # pec / prd: only the tests of these files that exercise the module (the others run other strategies)
    "pec": Module("strategies/pec.py", [f"tests/test_mutation_strategies.py::test_pec_{t}" for t in (
        "loss_is_the_sum_of_per_class_mean_errors", "step_moves_each_student_as_if_its_class_came_alone",
        "predicts_the_class_with_the_smallest_error_and_masks_unseen")] + [
        f"tests/test_strategies_heads_pec_center.py::test_pec_{t}" for t in (
            "students_share_init_and_the_teacher_is_frozen_and_wider",
            "scores_of_a_class_drop_after_training_its_student_and_others_are_unchanged",
            "per_class_learning_rate_decays_linearly_to_zero", "cnn_students_match_their_selected_forward")]),
    "prd": Module("strategies/prd.py", [f"tests/test_mutation_strategies.py::test_{t}" for t in (
        "relation_distillation_is_kl_of_old_to_new_per_old_task", "prd_loss_distils_old_relations_into_the_new_model",
        "prd_first_task_has_no_distillation_and_supcon_by_hand")] + [
        f"tests/test_strategies2_mechanism.py::test_{t}" for t in (
            "prd_prototype_loss_sends_no_gradient_to_encoder", "prd_old_prototypes_move_only_through_distillation",
            "prd_one_softmax_per_old_task", "supcon_prefers_clustered_embeddings")] + [
        "tests/test_strategies2_engine.py::test_smoke_vit[prd]", "tests/test_strategies2_engine.py::test_smoke_minilm[prd]"]),
    "ncm": Module("strategies/ncm.py", ["tests/test_mutation_strategies.py::test_ncm_freezes_its_backbone_and_trains_nothing",
                                        "tests/test_mutation_strategies.py::"
                                        "test_ncm_runs_on_cached_frozen_features_and_its_options_are_config_fields",
                                        "tests/test_strategies_heads_pec_center.py::test_ncm_euclidean_and_cosine_scores",
                                        "tests/test_strategies_heads_pec_center.py::"
                                        "test_ncm_strategy_classifies_by_the_nearest_mean_without_training"]),
    # -- the baseline strategies (issues 14-16): each with the mechanism tests of its file (fast, hand-computed)
    #    first, then its boundary-resume test
    **{name: Module(f"strategies/{name}.py", [f"{_RP}::{t}" for t in tests] + [f"{_RP}::test_resume_from_a_boundary_is_exact[{rid}]"])
       for name, rid, tests in [
           ("der", "der", ["test_raw_logits_are_unmasked_and_forward_unchanged", "test_der_stores_unmasked_logits_of_the_step",
                           "test_der_replay_loss_is_alpha_mse_to_stored_logits", "test_derpp_adds_beta_ce_on_an_independent_batch"]),
           ("derpp", "derpp", ["test_der_stores_unmasked_logits_of_the_step[derpp]",
                               "test_derpp_adds_beta_ce_on_an_independent_batch"]),
           ("xder", "xder", ["test_xder_update_logits_formula",
                             "test_xder_future_past_update_changes_only_current_and_future_entries",
                             "test_xder_past_constraint_hand_computed",
                             "test_xder_past_constraint_is_in_the_loss_after_the_first_task"]),
           ("agem", "agem", ["test_agem_projection", "test_episodic_memory_is_per_experience_and_first_pass_only[agem]",
                             "test_agem_step_uses_the_projected_gradient"]),
           ("gem", "gem", ["test_gem_projection_is_the_closest_feasible_gradient",
                           "test_episodic_memory_is_per_experience_and_first_pass_only[gem]",
                           "test_gem_step_satisfies_every_past_constraint"]),
           ("gdumb", "gdumb", ["test_gdumb_memory_is_class_balanced_and_no_step_is_taken_on_the_stream",
                               "test_gdumb_retrains_from_scratch_on_the_memory"]),
           ("er_aml", "er-aml", ["test_aml_loss_matches_a_hand_computed_case", "test_aml_positives_and_negatives_are_valid",
                                 "test_aml_uses_ce_before_the_second_experience"]),
       ]},
    **{name: Module(f"strategies/{name}.py", [f"{_RG}::{t}" for t in tests] +
                    [f"{_RG}::test_resume_from_a_boundary_is_exact[{rid}]" for rid in rids])
       for name, rids, tests in [
           ("ewc", ["ewc-extra0", "ewc-extra9"], ["test_ewc_penalty_is_fisher_weighted_distance",
                                                  "test_ewc_warns_when_the_penalty_is_too_stiff_for_sgd",
                                                  "test_online_ewc_running_fisher_follows_gamma"]),
           ("si", ["si-extra1"], ["test_si_importance_is_hand_computed_path_integral_on_a_quadratic"]),
           ("mas", ["mas-extra2"], ["test_mas_importance_is_mean_absolute_gradient_of_output_norm",
                                    "test_mas_ignores_unseen_classes"]),
           ("rwalk", ["rwalk-extra8"], ["test_rwalk_score_is_per_step_fisher_normalised_path_integral"]),
           ("_reg", ["ewc-extra0", "si-extra1"], ["test_ewc_penalty_is_fisher_weighted_distance",
                                                  "test_online_ewc_running_fisher_follows_gamma",
                                                  "test_si_importance_is_hand_computed_path_integral_on_a_quadratic",
                                                  "test_mas_importance_is_mean_absolute_gradient_of_output_norm",
                                                  "test_rwalk_score_is_per_step_fisher_normalised_path_integral"]),
           ("lwf", ["lwf-extra3"], ["test_lwf_distillation_is_zero_for_the_frozen_copy_and_hand_kd_after_a_change"]),
           ("lwf_mc", ["lwf-mc-extra4"], ["test_lwf_mc_targets_are_one_hot_new_and_teacher_sigmoid_old"]),
           ("icarl", ["icarl-extra5"], ["test_icarl_memory_is_herded_reduced_and_classifies_by_nme"]),
           ("lucir", ["lucir-extra6"], ["test_lucir_imprints_new_weights_and_less_forget_is_zero_for_unchanged_model",
                                        "test_lucir_margin_ranking_matches_hand_computation_and_old_weights_stay_fixed"]),
           ("bic", ["bic-extra7"], ["test_bic_bias_layer_changes_only_new_class_logits_and_fits_on_validation",
                                    "test_bic_validation_is_held_out_memory_and_new_data"]),
       ]},
    **{name: Module(f"strategies/{name}.py", [f"{_RI}::{t}" for t in tests] +
                    [f"{_RI}::test_resume_from_a_boundary_is_exact[{rid}]" for rid in rids])
       for name, rids, tests in [
           ("pnn", ["pnn"], ["test_pnn_freezes_earlier_columns_and_outputs",
                             "test_pnn_earlier_columns_get_no_gradient_and_laterals_feed_the_new_column"]),
           ("packnet", ["packnet"], ["test_packnet_prunes_by_magnitude_and_assigns_owners",
                                     "test_isolation_leaves_earlier_tasks_bitwise_unchanged_mlp_and_cnn[packnet]"]),
           ("hat", ["hat"], ["test_hat_gradient_compensation_and_regulariser_hand_computed",
                             "test_isolation_leaves_earlier_tasks_bitwise_unchanged_mlp_and_cnn[hat]"]),
           ("rmn", ["rmn"], ["test_rmn_binary_maps_straight_through_and_frozen_relevant_weights",
                             "test_isolation_leaves_earlier_tasks_bitwise_unchanged_mlp_and_cnn[rmn]"]),
           ("hnet", ["hnet", "hnet-rnn"], ["test_hnet_output_regulariser_zero_unchanged_positive_after_change",
                                           "test_hnet_rnn_generates_layer_by_layer_and_chunked_hnet_does_not_depend_across_chunks",
                                           "test_hnet_keeps_batchnorm_statistics_per_task"]),
           ("cl2r", ["cl2r"], ["test_dsimplex_classifier_is_fixed_and_equiangular",
                               "test_cl2r_feature_distillation_on_memory_only_and_compatibility_logged"]),
       ]},
    # -- the rest (issue 19's third round; first lists: every test file that exercises the module, to be narrowed
    #    to its fast mechanism tests by whoever runs it).  One entry per line, grouped by who runs them.
    "_task_il": Module("strategies/_task_il.py", [_RI]),
    "podnet": Module("strategies/podnet.py", ["tests/test_podnet.py"]),
    "_exemplars": Module("strategies/_exemplars.py", [_RP, "tests/test_podnet.py"]),
    "mir": Module("strategies/mir.py", ["tests/test_ocl1.py"]),
    "gss": Module("strategies/gss.py", ["tests/test_ocl1.py"]),
    "aser": Module("strategies/aser.py", ["tests/test_ocl1.py"]),
    "rar": Module("strategies/rar.py", ["tests/test_ocl1.py"]),
    "_rar": Module("strategies/_rar.py", ["tests/test_ocl1.py"]),
    "slda": Module("strategies/slda.py", ["tests/test_ocl3.py"]),
    "scr": Module("strategies/scr.py", ["tests/test_ocl2.py"]),
    "pcr": Module("strategies/pcr.py", ["tests/test_ocl2.py"]),
    "ocm": Module("strategies/ocm.py", ["tests/test_ocl2.py"]),
    "onpro": Module("strategies/onpro.py", ["tests/test_ocl2.py"]),
    "_contrastive": Module("strategies/_contrastive.py", ["tests/test_ocl2.py"]),
    "dualprompt": Module("strategies/dualprompt.py", ["tests/test_ptm1.py"]),
    "coda_prompt": Module("strategies/coda_prompt.py", ["tests/test_ptm1.py"]),
    "hide_prompt": Module("strategies/hide_prompt.py", ["tests/test_ptm1.py"]),
    "l2p": Module("strategies/l2p.py", ["tests/test_strategies2_mechanism.py", "tests/test_correctness_issue13.py",
                                        "tests/test_strategies2_engine.py"]),
    "sprompts": Module("strategies/sprompts.py", ["tests/test_strategies2_mechanism.py", "tests/test_strategies2_engine.py"]),
    # aper / ease / _sessions / _closed_form: the constructed cases of their test_mutation_*.py files only (added in
    # the loop below); those of test_ptm2.py are covered there and its collection alone (it imports the issue-6
    # test modules) doubles a mutant's cost on the shared machine.  ranpac / fecam: test_ptm3.py's tests after theirs
    "aper": Module("strategies/aper.py", []),
    "ease": Module("strategies/ease.py", []),
    "simplecil": Module("strategies/simplecil.py", [f"tests/test_ptm2.py::test_simplecil_{t}" for t in (
        "is_ncm_with_simplecil_defaults", "and_ncm_runs_give_the_same_R")]),
    "_sessions": Module("strategies/_sessions.py", ["tests/test_mutation_aper.py", "tests/test_mutation_ease.py"]),  # + its own
    "ranpac": Module("strategies/ranpac.py", [f"tests/test_ptm3.py::test_{t}" for t in _RANPAC]),
    "fecam": Module("strategies/fecam.py", [f"tests/test_ptm3.py::test_{t}" for t in _FECAM]),
    "_closed_form": Module("strategies/_closed_form.py", [f"tests/test_ptm3.py::test_{t}" for t in _RANPAC + _FECAM[:2] + (
        "slca_backbone_moves_at_a_hundredth_of_the_head_lr_and_old_rows_stay",
        "slca_alignment_trains_only_the_head_on_class_gaussian_samples",
        "inflora_update_lies_orthogonal_to_earlier_tasks_inputs", "inflora_trains_only_b_and_the_head")]),
    "slca": Module("strategies/slca.py", ["tests/test_ptm3.py"]),
    "inflora": Module("strategies/inflora.py", ["tests/test_ptm3.py"]),
    "lae": Module("strategies/lae.py", ["tests/test_ptm3.py"]),
    "ssiat": Module("strategies/ssiat.py", ["tests/test_strategies2_mechanism.py", "tests/test_correctness_issue13.py",
                                            "tests/test_strategies2_engine.py"]),
    "color": Module("strategies/color.py", ["tests/test_strategies2_mechanism.py", "tests/test_strategies2_engine.py"]),
    "kalman": Module("strategies/kalman.py", ["tests/test_strategies_kalman.py"]),
    "_kalman_filter": Module("strategies/_kalman_filter.py", ["tests/test_strategies_kalman.py"]),
    "center_loss": Module("strategies/center_loss.py", ["tests/test_strategies_heads_pec_center.py"]),
    "joint": Module("strategies/joint.py", ["tests/test_engine.py", "tests/test_resume.py"]),
    "linear_probe": Module("strategies/linear_probe.py", ["tests/test_features.py"]),
    "recency": Module("strategies/recency.py", ["tests/test_correctness_issue13.py"]),
    "_boundaries": Module("strategies/_boundaries.py", ["tests/test_task_free_contract.py"]),
    "finetune": Module("strategies/finetune.py", ["tests/test_engine.py"]),
}
for _name, _file in (("der", "der"), ("derpp", "der"), ("gem", "gem"), ("agem", "agem"), ("gdumb", "gdumb"),
                      ("er_aml", "er_aml"), ("engine", "engine_phases"), ("sweep-runner", "sweep_runner"),
                      ("online", "online"), ("prd", "prd"), ("pec", "pec"),
                      ("_reg", "reg"), ("ewc", "ewc"), ("si", "si"), ("mas", "mas"), ("rwalk", "rwalk"), ("lwf", "lwf"),
                      ("lwf_mc", "lwf"), ("icarl", "icarl"), ("bic", "bic"), ("lucir", "lucir"),
                      ("xder", "xder"), ("aper", "aper"), ("_sessions", "sessions"), ("ease", "ease"),
                      ("ranpac", "ranpac"), ("fecam", "fecam"), ("_closed_form", "closed_form")):  # the tests written from their first
    MODULES[_name].tests.insert(0, f"tests/test_mutation_{_file}.py")  # mutation run come first (fast, by hand)

# Operator names (regular expressions, matched from the start) left out of every run: replacements of an
# arithmetic operator by a bitwise / shift one (or the reverse), by % or **, and comparisons turned into
# identity tests.  They are implausible bugs and nearly always crash; they would triple the run time.
_ARITH = "Add|Sub|Mul|Div|FloorDiv|Mod|Pow"
EXCLUDE_OPERATORS = [
    rf"core/ReplaceBinaryOperator_({_ARITH})_(Mod|Pow|LShift|RShift|BitOr|BitAnd|BitXor)$",
    rf"core/ReplaceBinaryOperator_(BitOr|BitAnd|BitXor)_({_ARITH}|LShift|RShift)$",
    r"core/ReplaceBinaryOperator_(LShift|RShift)_",
    r"core/ReplaceComparisonOperator_(Eq|NotEq|Lt|LtE|Gt|GtE)_(Is|IsNot)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot)_(Eq|NotEq|Lt|LtE|Gt|GtE)$",
]

# Surviving mutants that are equivalent (no observable change) or accepted, per module:
# (operator regex, part of the original source line, part of the mutated line ("" = any), reason).
# Source parts are compared with all whitespace removed; the original line is followed by " in <function>"
# (its qualified name), so that "@torch.no_grad() in SI.before_optimizer_step" names one decorator of several.  Each is explained in docs/testing.md.
_NEVER_NEG = "a size is never negative, so the two conditions agree"
_CUDA_ONLY = ("accepted: the CUDA RNG branch; on a machine without CUDA (where these runs are made) both sides are "
              "False whatever the operator, so no CPU test can tell (it needs a run on a GPU)")
_TOGETHER = ("the teacher and old_classes are set together (after_experience, load_extra_state): both empty before "
             "the first boundary, both set after it (as in lwf)")
_SESSION_SAVED = ("the default is never read: the strategy's extra state always holds session (state_attrs of "
                  "SessionMixin), and the engine loads only states the strategy saved")
_ONE_SUBSPACE = "with one subspace (1 - own) is all zeros: the weight of the other subspaces multiplies nothing"
_NO_OLD = "the shortcut only skips an empty set of old classes, which indexes no rows: nothing is written either way"
_EMPTY_W = ("rp_dim >= 0; at 0 the mutant's W_rand is zeros(in_dim, 0) instead of zeros(0): neither holds an entry, "
            "and W_rand is read only through numel() there (hidden, setup)")
EQUIVALENT: dict[str, list[tuple[str, str, str, str]]] = {
    "metrics": [
        (r"core/ReplaceComparisonOperator_Eq_(Lt|LtE)$", "c.size == 0", "", _NEVER_NEG),
        (r"core/NumberReplacer$", "c.size == 0", "c.size == -1",
         "the test only short-cuts the empty stream, which the loop turns into [] anyway"),
        (r"core/ReplaceComparisonOperator_LtE_Eq$", "every <= 0 or", "every == 0",
         "a negative `every` gives an empty range: no points either way"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if s.size == 0:", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if s[-1] > 0 else", "",
         "s[-1] >= 0 once the widths (from s_0 = 0) are checked non-negative, so != 0 means > 0"),
        (r"core/NumberReplacer$", "return np.zeros((0, 0))", "",
         "the empty matrix is only tested for size 0 by its caller; shapes (1, 0) and (0, 1) have size 0 too"),
        (r"core/ReplaceComparisonOperator_Eq_(Lt|LtE)$", "if A.size == 0:", "", _NEVER_NEG),
        (r"core/NumberReplacer$", "if A.size == 0:", "A.size == -1",
         "an empty matrix has no columns: the loop returns [] anyway"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if prev.size == 0 or", "", _NEVER_NEG),
        (r"core/NumberReplacer$", "range(max(0, n_batches - shift))", "max( -1,", "range(-1) and range(0) are both empty"),
        (r"core/NumberReplacer$", "start: float = 0.0", "start: float = -1.0",
         "batch 0 arrives at time 0 >= start either way, and the schedule sets `free` from then on"),
        (r"core/ReplaceComparisonOperator_GtE_Gt$", "ok = g >= free - 1e-9", "",
         "with the 1e-9 tolerance, > and >= differ only if g == free - 1e-9 exactly (accepted: no real cost hits it)"),
        (r"core/NumberReplacer$", "free = g + max(float(cost), 1.0)", "max(float(cost), 0.0)",
         "a cost below 1 leaves the learner free before the next batch (g + 1) either way"),
    ],
    "buffers": [
        (r"core/ReplaceComparisonOperator_Eq_(Lt|LtE)$|core/NumberReplacer$", "if self.capacity == 0:",
         "if self.capacity",
         "capacity 0 without the early return stores nothing either: every sample goes to the trash row and "
         "len() stays 0 (the return is a shortcut; a negative capacity is refused in __init__)"),
        (r"core/NumberReplacer$", "torch.zeros((self.capacity + 1,)", "self.capacity+2,",
         "one more spare row, never written (losers go to row `capacity`) nor read (reads stop at len())"),
        (r"core/ReplaceComparisonOperator_Eq_(Lt|LtE)$", "if len(self) == 0:", "",
         "an empty buffer (nothing offered, or capacity 0) has no data tensors: the sample is {} either way"),
        (r"core/NumberReplacer$", "if len(self) == 0:", "len(self) == -1",
         "an empty buffer (nothing offered, or capacity 0) has no data tensors: the sample is {} either way"),
        (r"core/ReplaceBinaryOperator_Sub_(Add|Mul|FloorDiv)$|core/NumberReplacer$", "clamp_max_(size - 1)",
         "clamp_max_(size",
         "accepted: a guard against u * size rounding up to size; torch.rand gives u < 1 and u * size < size "
         "in float32, so the clamp never acts on CPU or CUDA with the built-in generator"),
    ],
    "prototypes": [
        (r"core/NumberReplacer$", "self.counts.index_add_(0, y,", "index_add_( -1,",
         "counts is 1-D: dimension -1 is dimension 0"),
        (r"core/ReplaceComparisonOperator_Eq_(LtE|Lt|GtE|Gt)$", 'if self.metric == "cosine":', 'self.metric<="cosine"',
         "the metric is validated to be euclidean or cosine, and 'euclidean' <= 'cosine' is False: same branch"),
    ],
    "checkpoint": [
        (r".*", "if torch.cuda.is_available() and torch.cuda.is_initialized():", "", _CUDA_ONLY),
        (r".*", 'if "cuda" in st and torch.cuda.is_available():', "",
         _CUDA_ONLY + "; a GPU checkpoint resumed on a CPU machine carries a cuda state, but there "
         "torch.cuda.set_rng_state_all only queues a call for a CUDA initialisation that never comes (checked)"),
        (r"core/AddNot$", 'torch.set_rng_state(st["torch"].cpu() if isinstance(st["torch"], torch.Tensor)', "",
         "accepted: the saved state is always a tensor, loaded onto the run's device (map_location); .cpu() "
         "matters only when that device is a GPU (set_rng_state needs a CPU tensor), so no CPU test can tell"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "and len(obj) == 2:", "",
         "both tag keys are tested present just before, so len(obj) >= 2 and <= 2 means == 2"),
        (r"core/ReplaceTrueWithFalse$|core/ReplaceFalseWithTrue$", ".astype(np.dtype(obj[\"dtype\"]), copy=False)", "",
         "copy=True copies the array out of a tensor that nothing else holds: same values, same dtype"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "if obj.dtype == object:", "",
         "numpy orders dtypes by safe casting: d >= object only if object casts safely to d, i.e. d is object "
         "(checked over every builtin dtype)"),
    ],
    "online": [
        (r"core/ReplaceComparisonOperator_Gt_(NotEq|GtE)$", "if upto > self.synced:", "",
         "upto (the end of the batch just predicted) never decreases within an experience and synced restarts at 0 "
         "with each one, so upto >= synced: != means >, and >= only adds an empty copy"),
        (r"core/NumberReplacer$", "if 0 <= m - 1 - st.seen < len(self.times) else None", "if -1 <= m - 1 - st.seen",
         "an anytime evaluation comes after at least one sample of the experience (m >= st.seen + 1): the lower "
         "bound never binds"),
        (r"core/ReplaceComparisonOperator_Lt_(NotEq|LtE)$", "if m < self._pos:", "",
         "the cursor is an optimisation: starting the count over from sample 0 whenever m moves gives the same count"),
        (r"core/ReplaceBinaryOperator_Mul_|core/NumberReplacer$", "np.resize(self.a, max(need, 2 * len(self.a)))", "",
         "only the spare capacity changes: max(need, ...) always leaves room for the need samples"),
        (r"core/ReplaceComparisonOperator_Gt_GtE$", "if need > len(self.a):", "",
         "growing also when the samples exactly fill the array only adds spare capacity (the contents are kept)"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if pcfg.eval_subsample and n_te > pcfg.eval_subsample:", "",
         "with n_te <= eval_subsample the subsample would be every test index, sorted: the same as no subsample"),
        (r"core/ReplaceBinaryOperator_Add_(Sub|Mul)$|core/NumberReplacer$", "torch.Generator().manual_seed(7919 + j)", "",
         "accepted: another fixed seed per experience; the subsample is a uniform draw of the given size, the same "
         "at every evaluation point and independent of the run's RNG either way (tested); which fixed draw is a "
         "convention, and pinning 7919 + j would test the code's text"),
        (r"core/ReplaceBinaryOperator_Mul_FloorDiv$", "c.nf_correct += int(nf[min(n, S * bs):].sum().item())", "",
         "nf is only written at the near-future targets, batches S.. (positions >= S * bs), so it is False before "
         "S * bs and the sum from S // bs <= S * bs counts the same"),
        (r"core/NumberReplacer$", "if self.times is not None and 0 <= m - 1 - base < len(self.times):", "-1 <=",
         "every curve point m <= base was emitted by the read at the previous experience's last step (which copies "
         "all its samples), so a point emitted in this experience has m > base: the lower bound never binds"),
        (r"core/NumberReplacer$", 'self.events.step(0, online_acc=f"{h.total / max(1, h.n):.3f}")', "max( 0, h.n)",
         "_flush runs after a predicted batch (at least one sample), so h.n >= 1 and max(0, h.n) == max(1, h.n)"),
        (r"core/RemoveDecorator$", "@torch.no_grad()", "",
         "_anytime only indexes tensors and calls the evaluation function, which runs under torch.no_grad itself"),
        (r"core/NumberReplacer$", 'check_finite(losses[: s + 1], f"by step {s}", i)', "losses[: s + 2]",
         "losses[s + 1] is not trained yet at step s and holds its initial 0: finite, so the check is the same"),
        (r"core/ReplaceComparisonOperator_Lt_(LtE|NotEq)$",
         "if 0 <= m - 1 - st.seen < len(self.times) else None", "",
         "an anytime evaluation is at a batch end of this experience, m <= st.seen + n, so m - 1 - st.seen < "
         "len(times) = n always: the upper bound never binds"),
        (r"core/NumberReplacer$", "self.a = np.zeros(1024, dtype=np.uint8)", "",
         "the initial capacity only: extend grows the array whenever it is short (1023 or 1025 slots hold the same "
         "samples)"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if pcfg.realtime and pcfg.realtime_cost > 0:", "",
         "protocol.realtime_cost is validated >= 0 (a negative value is a ConfigError), so != 0 means > 0"),
        (r"core/ReplaceComparisonOperator_Eq_(Gt|GtE)$", 'if self.device.type == "cuda":', "",
         "accepted: the CUDA synchronize before timing an anytime evaluation (timing only); 'cpu' > 'cuda' and "
         "'cpu' >= 'cuda' are False, so no CPU test can tell (>= is also True on CUDA: the same branch there)"),
        (r"core/ReplaceComparisonOperator_Lt_(LtE|NotEq)$",
         "if self.times is not None and 0 <= m - 1 - base < len(self.times):", "",
         "a curve point is emitted once its sample is read, m <= h.n <= base + n, so m - 1 - base < len(times) = n "
         "always: the upper bound never binds"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if m > lo else 0.0", "",
         "lo = max(0, m - w) <= m for a sample count m >= 0, so m != lo means m > lo"),
        (r"core/ReplaceComparisonOperator_GtE_Gt$", "if not p.realtime or g >= c.free_at - 1e-9:", "",
         "g is a whole number and free_at - 1e-9 = g0 + max(C, 1) - 1e-9 is one only for a cost C within float "
         "rounding of k + 1e-9 (measured costs are rounded to whole numbers): no schedule tells > from >="),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if (s + 1) % SYNC_EVERY == 0 or last:", "",
         "a remainder modulo the positive SYNC_EVERY is never negative, so <= 0 means == 0"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "last = s + 1 == steps", "",
         "s < steps in the loop, so s + 1 >= steps only at s + 1 == steps"),
        (r"core/NumberReplacer$", "c.free_at = g + max(st.realtime_cost, 1.0)", "max(st.realtime_cost, 0.0)",
         "a cost below 1 leaves the learner free by the next batch (g + 1) either way (as in metrics): the same "
         "schedule; only the cursor's free_at reads g + C instead of g + 1, both already passed at batch g + 1"),
    ],
    "uer": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if self.cfg.infer == "cosine":', "",
         "infer is validated to be dot or cosine (build_model), and 'dot' <= 'cosine' is False: same branch"),
    ],
    "er_aml": [
        (r"core/NumberReplacer$", "self.exp_index = 0", "",
         "before_experience sets exp_index (an index, or a HiddenBoundary's) before aml_phase reads it"),
        (r"core/NumberReplacer$", 'self.exp_index = state.get("exp_index", 0)', "",
         "extra_state always saves exp_index: the default is never used"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(self.buffer) == 0:", "", "a length is never negative"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "self.exp_index > 0", "", "an experience index is never negative"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'self.info.boundaries != "visible"', "",
         "boundaries is visible, hidden, blurry or gradual, and every other value sorts before 'visible'"),
    ],
    "gdumb": [
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'self.info.boundaries == "visible"', "",
         "boundaries is visible, hidden, blurry or gradual, and every other value sorts before 'visible'"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'self.info.protocol != "online"', "",
         "protocol is offline or online, and 'offline' < 'online'"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if self.to_offer > 0:", "",
         "to_offer never goes below 0, and at 0 the mutants offer x[:0], an empty batch, which the buffer ignores"),
        (r"core/NumberReplacer$", "if self.to_offer > 0:", "self.to_offer > -1",
         "to_offer never goes below 0, and at 0 the mutant offers x[:0], an empty batch, which the buffer ignores"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "0.1 if epoch == 0 else 1.0", "", "epochs count from 0"),
        (r"core/ReplaceTrueWithFalse$", "opt.zero_grad(set_to_none=True)", "",
         "every trained parameter gets a gradient in each backward, so zeroed and absent gradients step alike"),
    ],
    "agem": [
        (r"core/NumberReplacer$", "self.per_task = self.cfg.buffer_size // max(1, self.info.n_experiences)", "max( 0,",
         "a run has at least one experience: max(0, n) = max(1, n)"),
        (r"core/NumberReplacer$", "self.to_offer = 0", "",
         "before_experience sets to_offer before any step of an experience; the initial value is never read"),
        (r"core/NumberReplacer$", "self.exp_index = 0", "",
         "before_experience sets exp_index before after_experience reads it; the initial value is never read"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if self.to_offer > 0:", "",
         "with to_offer == 0 (never below) the mutant offers x[:0], an empty batch, which the buffer ignores"),
        (r"core/NumberReplacer$", "if self.to_offer > 0:", "self.to_offer > -1",
         "with to_offer == 0 (never below) the mutant offers x[:0], an empty batch, which the buffer ignores"),
        (r"core/AddNot$", 'if "pending" in state:', "",
         "checkpoints are taken at boundaries, and before_experience replaces pending before it is read again"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if self.cfg.memory == "episodic":', "",
         "memory is validated to be episodic or reservoir (setup), and 'reservoir' <= 'episodic' is False"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'return self.cfg.memory == "reservoir"', "",
         "memory is validated to be episodic or reservoir (setup), and 'episodic' >= 'reservoir' is False"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(self.buffer) == 0:", "", "a length is never negative"),
    ],
    "der": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'return raw if self.cfg.ce_classes == "all"', "",
         "ce_classes is validated to be all or seen (setup), and 'seen' <= 'all' is False: same branch"),
    ],
    "xder": [
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "present, past = self.class_task == self.cur, self.past()", "",
         "class_task is -1 (unseen) or the experience a class was (last) in, never above cur: >= cur means == cur"),
        (r"core/NumberReplacer$", "c.eta > 0", "c.eta > -1",
         "eta is validated >= 0 (setup); with eta == 0 the mutant adds 0 * (a finite mean)"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "pos = h > 0 in XDER.loss", "",
         "h (past_constraint's output) is clamped at 0, so != 0 means > 0 (the future constraint's h is not: "
         "its mutants are killed)"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "return (self.class_task >= 0) & (self.class_task < self.cur)", "",
         "class_task holds the experience a seen class was (last) in, set by before_experience: it is never "
         "above cur, so among seen classes != cur means < cur"),
        (r"core/NumberReplacer$", "scatter_reduce(0, inv, ar, \"amin\")", "scatter_reduce( -1,",
         "the tensor is 1-D: dimension -1 is dimension 0"),
        (r"core/ReplaceBinaryOperator_BitOr_BitXor$", "p = F.softmax(logits.masked_fill(~(past | present)", "",
         "past (earlier experiences' classes) and present (the current one's) are disjoint: | and ^ agree"),
        (r"core/NumberReplacer$", "bad = p.masked_fill(~past, 0).max(1).values.detach()", "masked_fill(~past, -1)",
         "the loss calls past_constraint only when a past class exists (past.any()): each row's maximum is over "
         "softmax probabilities >= 0 > -1, so the fill value is never the maximum"),
        (r"core/NumberReplacer$", "good = p.masked_fill(~present, 0).max(1).values", "masked_fill(~present, -1)",
         "the present classes (the current experience's) are never empty: each row's maximum is a probability "
         ">= 0 > -1, so the fill value is never the maximum"),
        (r"core/ReplaceComparisonOperator_Gt_(NotEq|GtE)$", "c.eta > 0", "",
         "eta is validated >= 0 (setup), so != 0 means > 0; with eta == 0 the >= mutant adds 0 * (a finite mean)"),
        (r"core/ReplaceComparisonOperator_Lt_LtE$", "* self.counter[idx] < 1", "",
         "u * count with u = torch.rand in [0, 1): at count 1 both are True; at count k >= 2 they differ only if "
         "u == 1/k exactly (probability 2^-24 a draw, accepted)"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if self.to_offer > 0:", "",
         "with to_offer == 0 (never below) the mutant offers x[:0], an empty batch, which the buffer ignores"),
        (r"core/NumberReplacer$", "if self.to_offer > 0:", "self.to_offer > -1",
         "with to_offer == 0 (never below) the mutant offers x[:0], an empty batch, which the buffer ignores"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.cur > 0:", "",
         "cur is an experience index, never negative"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "old = self.class_task[mem[\"y\"]] < self.cur", "",
         "the memory holds samples of classes already seen, whose experience is <= cur: != cur means < cur"),
        (r"core/NumberReplacer$", "quota = torch.full((len(new),), free // max(1, len(new))", "max( 0,",
         "an experience has at least one class (before_experience indexes class_task by exp.classes; an empty "
         "list is a float tensor there and fails), so max(0, n) = max(1, n)"),
        (r"core/ReplaceBinaryOperator_FloorDiv_Div$", "quota = torch.full((len(new),), free // max(1, len(new))", "",
         "torch.full with dtype=torch.long truncates the non-negative quotient free / n: the same as free // n"),
        (r"core/NumberReplacer$", "per = K // max(1, int(seen.sum()))", "max( 0,",
         "before_experience marks the experience's classes seen, and an experience has at least one class"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in XDER.revisit", "",
         "revisit's only caller passes detached outputs, and the memory's logits hold no graph: nothing records a "
         "gradient either way"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in XDER.after_experience", "",
         "after_experience computes on the memory, the pending samples (no graph) and logits_of's outputs (under "
         "its own torch.no_grad): nothing records a gradient either way"),
    ],
    "ncm": [
        (r"core/NumberReplacer$", "return torch.optim.SGD([self._dummy], lr=0.0)", "",
         "the inert optimiser's only parameter never gets a gradient, so SGD skips it whatever the learning rate"),
    ],
    "settings": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if cfg.boundaries == "blurry" and cfg.setting in', "",
         "boundaries is checked just before to be visible, hidden, blurry or gradual, and only 'blurry' among "
         "them is <= 'blurry'"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", "if len(set(ids)) != len(ids):", "",
         "the set of a list's values is never longer than the list, so < and != agree"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'setting = "task" if cfg.task_labels and cfg.setting == "class"', "",
         "setting is validated to be class, task, domain or data, and only 'class' among them is <= 'class'"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(present) == 0:", "", "a length is never negative"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if cfg.boundaries == "blurry" and cfg.stochastic_tasks:', "",
         "boundaries is validated to be visible, hidden, blurry or gradual, and only 'blurry' among them is <= 'blurry'"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'task_labels=setting == "task"', "",
         "here setting is class or task (domain and data took the branches above), and 'class' >= 'task' is False"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if setting == "task":', "",
         "here setting is class or task (domain and data took the branches above), and 'class' >= 'task' is False"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'elif cfg.boundaries == "blurry":', "",
         "reached with boundaries visible, blurry or gradual (hidden took the branch above), and 'visible' and "
         "'gradual' sort after 'blurry'"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'elif cfg.boundaries == "gradual":', "",
         "reached with boundaries visible or gradual only, and 'visible' sorts after 'gradual'"),
    ],
    "results": [
        (r"core/ReplaceBinaryOperator_BitOr_BitXor$", "fcntl.LOCK_SH | fcntl.LOCK_NB", "",
         "LOCK_SH and LOCK_NB are distinct bits (1, 4): ^ and | give the same flags"),
        (r"core/ReplaceBinaryOperator_BitOr_BitXor$", "fcntl.LOCK_EX | fcntl.LOCK_NB", "",
         "LOCK_EX and LOCK_NB are distinct bits (2, 4): ^ and | give the same flags"),
        (r"core/ReplaceBinaryOperator_BitOr_BitXor$", 'os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)', "",
         "O_RDWR, O_CREAT and O_CLOEXEC are distinct bits: ^ and | give the same flags"),
        (r"core/ReplaceBinaryOperator_BitOr_(BitXor|BitAnd)$", 'os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)', "",
         "O_RDONLY is 0: ^ gives the same flags, and & gives O_RDONLY without O_CLOEXEC, which Python's os.open "
         "sets anyway (PEP 446: its descriptors are non-inheritable; checked: FD_CLOEXEC is set without the flag)"),
        (r"core/NumberReplacer$", 'getattr(os, "O_CLOEXEC", 0)', '"O_CLOEXEC",-1)',
         "os.O_CLOEXEC exists wherever fcntl does (Linux, macOS): the getattr default is never used"),
        (r"core/NumberReplacer$", 'getattr(os, "O_CLOEXEC", 0)', '"O_CLOEXEC",1)',
         "os.O_CLOEXEC exists wherever fcntl does (Linux, macOS): the getattr default is never used"),
        (r"core/NumberReplacer$", "os.ftruncate(self.fd, 0)", "os.ftruncate(self.fd,1)",
         "the record is written from offset 0 and is longer than 1 byte, so truncating to 1 byte or to 0 before "
         "writing it leaves the same file"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'INTERRUPTED if status == "interrupted" else FAILED', "",
         "reached with the statuses a run ends with other than finished (Run._execute_locked): interrupted or "
         "failed, and 'failed' >= 'interrupted' is False"),
        (r"core/ReplaceTrueWithFalse$", "print(s, file=sys.stderr, flush=True)", "",
         "sys.stderr needs no flush for a whole line: interactive it is line-buffered, otherwise (Python >= 3.9) "
         "it writes through to an unbuffered file (checked: the message is in a redirected stderr file while the "
         "process still runs, with flush=False)"),
        (r"core/ReplaceTrueWithFalse$", "(run_dir / other).unlink(missing_ok=True)", "",
         "the FileNotFoundError of a missing stale file is an OSError, caught around each unlink: nothing changes"),
    ],
    "er_ace": [
        (r"core/RemoveDecorator$", "@dataclass", "",
         "ERACEConfig adds no field: without @dataclass it still inherits ERConfig's dataclass fields and __init__"),
    ],
    "prd": [
        # SupCon: z z^T is symmetric, and so is the positive relation (same label, i != j), with the same number
        # of positives n_i = n_j for every positive pair: summing rows or columns, or subtracting row i's or
        # column i's log-sum-exp, gives the same loss
        (r"core/NumberReplacer$", "n_pos = pos.sum(1)", "pos.sum(0)", "pos is symmetric: its row and column sums agree"),
        (r"core/NumberReplacer$", "mean_log_pos = log_prob.masked_fill(~pos, 0.0).sum(1)", ".sum(0)",
         "a positive pair (i, j) has n_i = n_j and both anchors counted, so summing the masked log-probabilities "
         "by column instead of by row gives the same total"),
        (r"core/NumberReplacer$|core/ReplaceTrueWithFalse$", "torch.logsumexp(sim, dim=1, keepdim=True)", "",
         "sim = z z^T / tau is symmetric, so column j's log-sum-exp is row j's; subtracting it at column j instead of "
         "row i's at row i changes the sum over each class's positive pairs by nothing (each class member is as "
         "often i as j), equal up to float rounding"),
        (r"core/NumberReplacer$", "return -(mean_log_pos * has).sum() / has.sum().clamp_min(1)", "clamp_min(2)",
         "positives come in pairs, so has.sum() is 0 (numerator 0 as well) or at least 2"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "has = (n_pos > 0).float()", "", "a count is never negative"),
        (r"core/ReplaceTrueWithFalse$", "nn.ReLU(inplace=True)", "",
         "in place or not, the ReLU returns the same values, and the Linear before it needs its input, not its output, "
         "for the backward"),
        (r"core/RemoveDecorator$", "@torch.no_grad()", "",
         "observe() only writes a constant into a bool buffer, which never requires grad: no_grad changes nothing"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'if p.requires_grad and n != "prototypes"]', "",
         "PRDModel's parameters are backbone.*, projector.* and prototypes, and both other prefixes sort before "
         "'prototypes': the same parameters are left out"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if cfg.tune == "lora":', "",
         "in loss(): tune is validated to be full or lora (build_model), and 'full' >= 'lora' is False: same branch"),
        (r"core/ReplaceAndWithOr$", "if self.old_backbone is not None and self.old_tasks:", "",
         "after_experience and load_extra_state set the frozen copy and the old tasks together, so both are set or "
         "neither is"),
    ],
    "pec": [
        *[(r"core/NumberReplacer$", "conv, l2 = nn.Conv2d(input_shape[0], width, 3, 1, 1)", f"width,3,{sp})",
           "the Conv2d only initialises the first-layer weights (its init depends on the kernel size and channel "
           "counts, not on stride or padding); forward applies stride 1, padding 1 itself")
          for sp in ("2,1", "0,1", "1,2", "1,0")],
        (r"core/NumberReplacer$", "dev = self.params[0].device", "",
         "every student parameter lives on the model's one device: any parameter's device is the first one's"),
        *[(r"core/NumberReplacer$", 'DEFAULTS = {"mlp": dict(width=10, d_out=99, teacher_mult=500, lr=0.01, pool=0),',
           f"lr=0.01,pool={v})", "the MLP has no pooling: ParallelNets never reads pool for arch mlp") for v in ("1", "-1")],
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if arch == "mlp":', "",
         "arch is mlp or cnn (validated by build_model), and 'cnn' >= 'mlp' is False: same branch"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.arch == "mlp":', "",
         "arch is mlp or cnn (validated by build_model), and 'cnn' >= 'mlp' is False: same branch"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.kind == "sgd":', "",
         "kind is adam or sgd (validated by build_model), and 'adam' >= 'sgd' is False: same branch"),
        (r"core/ReplaceComparisonOperator_NotEq_Gt$", 'if cfg.arch != "auto":', "",
         "arch is auto, mlp or cnn (validated by build_model before _arch), and both others sort after 'auto'"),
        (r"core/NumberReplacer$|core/ReplaceUnaryOperator_", "out = self.teacher(x)[0]", "[-1]",
         "the teacher is one network (n = 1): index -1 is index 0"),
        (r"core/ReplaceContinueWithBreak$", "continue", "break",
         "the `if p.grad is None: continue` at line 150: PEC steps after a backward through forward_selected, which "
         "uses all six student parameters, so no gradient is None and the branch is never taken (the other "
         "`continue`, after the SGD update, is killed by the SGD tests)"),
        (r"core/NumberReplacer$", 'k = st["step"].clamp_min(1)', "clamp_min(0)",
         "k < 1 only for classes never stepped, whose nan bias correction torch.where drops (upd is False there)"),
        (r"core/ReplaceTrueWithFalse$", "def zero_grad(self, set_to_none=True):", "",
         "zero_grad always sets the gradients to None; the argument is there for the torch optimiser interface"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", 'return "cnn" if len(input_shape) == 3 and input_shape[0] > 1', "",
         "a channel count is at least 1"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "scale = torch.where(self.total > 0,", "",
         "a sample count is never negative"),
        (r"core/NumberReplacer$", "(1 - self.consumed / self.total.clamp_min(1))", "total.clamp_min(0)",
         "the clamp only acts where total is 0, which torch.where replaces by 1.0"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "self.optimizer.step(count > 0, scale)", "",
         "a sample count is never negative"),
    ],
    "_reg": [
        (r"core/NumberReplacer$", 'g = vmap(grad(f), in_dims=(None, 0, 0), randomness="same")', "in_dims=(None,0,-1)",
         "the labels are 1-D (one per sample): their dimension -1 is dimension 0"),
    ],
    "ewc": [
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "if 0 < self.cfg.fisher_samples < len(y):", "0 !=",
         "fisher_samples is validated to be >= 0 (setup), so != 0 means > 0"),
        (r"core/NumberReplacer$", 'old = self.terms[0]["fisher"]', "self.terms[-1]",
         "online EWC keeps exactly one term (it replaces the list at each boundary): terms[-1] is terms[0]"),
    ],
    "si": [
        (r"core/RemoveDecorator$", "@torch.no_grad() in SI.before_optimizer_step", "",
         "record_step_start computes the task gradient under task_gradients' own no_grad and keeps p.detach().clone(): "
         "nothing it stores requires grad either way"),
    ],
    "rwalk": [
        (r"core/RemoveDecorator$", "@torch.no_grad() in RWalk.before_optimizer_step", "",
         "the running Fisher is updated in place from the task gradient, which task_gradients computes under its own "
         "no_grad: nothing requires grad either way"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in RWalk.after_experience", "",
         "the boundary reads the parameters only through p.detach() and the accumulators, which hold no graph "
         "(after_step runs under no_grad): nothing requires grad either way"),
    ],
    "lwf": [
        (r"core/ReplaceAndWithOr$", "if self.teacher and self.old_classes:", "",
         "the teacher and old_classes are set together (after_experience, load_extra_state): both empty before the "
         "first boundary, both set after it; a teacher with no old class would distil over zero columns, which "
         "kd_loss gives as 0"),
    ],
    "lwf_mc": [
        (r"core/RemoveDecorator$", "@dataclass", "",
         "LwFMCConfig adds no field: without @dataclass it still inherits StrategyConfig's dataclass fields and __init__"),
        (r"core/NumberReplacer$", "masked_fill(~torch.isfinite(teacher_logits), 0.0)", "",
         "the filled entries are the teacher's -inf logits (classes it had not seen), and torch.where takes the "
         "teacher's targets only at old classes, whose logits are finite: the fill value is never selected"),
        (r"core/ReplaceAndWithOr$", "teacher = self.teacher(xa) if self.teacher and self.old_classes else None", "",
         _TOGETHER),
        (r"core/NumberReplacer$", "self.old_idx() if teacher is not None else seen[:0]", "",
         "this index is passed only with no teacher, and icarl_bce reads old_idx only when there is a teacher"),
    ],
    "icarl": [
        (r"core/ReplaceAndWithOr$", "teacher = self.teacher(xa) if self.teacher and self.old_classes else None", "",
         _TOGETHER),
        (r"core/NumberReplacer$", "m = self.cfg.buffer_size // max(1, len(self.old_classes))", "max( 0,",
         "read after DistillBase.after_experience has set old_classes to the head's seen classes, which include "
         "the experience's own: len >= 1, so max(0, n) = max(1, n)"),
        (r"core/NumberReplacer$", "self.old_idx() if teacher is not None else self.seen_idx()[:0]", "seen_idx()[:",
         "this index is passed only with no teacher, and icarl_bce reads old_idx only when there is a teacher "
         "(as in lwf_mc)"),
    ],
    "bic": [
        (r"core/NumberReplacer$", "self.teacher_bias = (1.0, 0.0, [])", "",
         "the initial value is never read: before_experience sets teacher_bias before any loss, and with an empty "
         "class list teacher_logits corrects nothing whatever alpha and beta"),
        (r"core/ReplaceAndWithOr$", "if not (self.teacher and self.old_classes):", "",
         _TOGETHER),
        (r"core/NumberReplacer$", "m = self.cfg.buffer_size // max(1, len(self.old_classes))", "max( 0,",
         "read after DistillBase.after_experience has set old_classes to the head's seen classes, which include "
         "the experience's own: len >= 1, so max(0, n) = max(1, n) (as in icarl)"),
        (r"core/NumberReplacer$", "v = int(self._is_val().sum()) // max(1, len(self.memory.classes()))", "max( 0,",
         "this branch runs only with a non-empty memory, which holds at least one class: max(0, n) = max(1, n)"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$",
         "return (self.memory.rank % self.cfg.val_every) == self.cfg.val_every - 1", "",
         "a remainder modulo val_every (>= 2, validated) is at most val_every - 1, so >= means =="),
    ],
    "lucir": [
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.cfg.buffer_size > 0 else self.cfg.exemplars_per_class", "",
         "buffer_size is validated >= 0 (setup), so != 0 means > 0"),
        (r"core/ReplaceAndWithOr$", "if not (self.teacher and self.old_classes) or not len(self._new_idx):", "",
         _TOGETHER),
        (r"core/NumberReplacer$", "w[c] = F.normalize(f[sel].mean(0), dim=0) * old_norm", "dim= -1",
         "the mean over samples is 1-D: its dimension -1 is dimension 0"),
        (r"core/ReplaceAndWithOr$", "if self.old_classes and self._frozen_rows is None:", "",
         "with old classes, a re-capture at a later step reads the rows after_step has just restored (the same "
         "values); without old classes the captured rows are empty and after_step writes nothing"),
    ],
    "heads": [
        (r"core/RemoveDecorator$", "@torch.no_grad()", "",
         "observe() only writes a constant into a bool buffer, which never requires grad: no_grad changes nothing"),
    ],
    "engine": [
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'seen = exp if self.scenario.boundaries == "visible" else', "",
         "boundaries is visible, hidden, blurry or gradual, and every other value sorts before 'visible'"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "if self.protocol.checkpoint and i + 1 < len(self.scenario):",
         "", "i runs over range(next_exp, len(scenario)), so i + 1 <= len: != and < agree"),
        (r"core/NumberReplacer$", 'torch.set_num_threads(int(self.cfg.get("threads") or 1))', "",
         "resolve always sets threads, validated >= 1 (cl/core/config.py): the fallback after `or` is never used"),
    ],
    "sweep-runner": [
        (r"core/NumberReplacer$", "done[0]", "done[-1]",
         "done is a one-item list (a counter the callback can increment): done[-1] is done[0]"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", '== "busy"', "",
         "a record's status is finished, failed, interrupted or busy (skipped once counted), and none sorts before "
         "'busy'"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if s == "skipped")', "",
         "the statuses known before the run are skipped or failed, and 'failed' sorts before 'skipped'"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "if s == 'skipped')} skipped", "",
         "'skipped' sorts after every other status (busy, failed, finished, interrupted)"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'elif st == "failed" and not retry_failed:', "",
         "'failed' sorts before every other state of a run folder (finished, running, partial, interrupted, pending)"),
        (r"core/NumberReplacer$", '(rec.get("error") or "").splitlines()[0:1]', "[0:2]",
         "only the first line is kept (extra[0] just below): [0:2] has the same first item"),
        (r"core/NumberReplacer$", 'extra = extra[0] if extra else ""', "extra[-1]",
         "extra is the slice [0:1], at most one item: extra[-1] is extra[0]"),
    ],
    # -- mut-ptm2's modules (aper, ease, _sessions, ranpac, fecam, _closed_form, simplecil)
    "aper": [
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.session > 0:", "",
         "session starts at -1 and before_experience raises it to >= 0 before train_data / train_step run: "
         "!= 0 means > 0"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if self.session == 0: in APER.before_experience", "",
         "session >= 0 after the increment of start_session just above: <= 0 means == 0"),
        (r"core/ReplaceComparisonOperator_Eq_Lt$", "if self.session == 0: in APER.before_experience", "",
         "the optimiser made there at session 0 equals the one Strategy.__init__ made (make_optimizer over the same "
         "tuned parameters with the same settings, no step in between), which the mutant keeps"),
        (r"core/NumberReplacer$", "if self.session == 0: in APER.before_experience", "self.session==-1",
         "the optimiser made there at session 0 equals the one Strategy.__init__ made (make_optimizer over the same "
         "tuned parameters with the same settings, no step in between), which the mutant keeps"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'deep=cfg.vpt_type == "deep"', "",
         "vpt_type is validated deep or shallow, and 'shallow' <= 'deep' is False"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if kind == "adapter":', "",
         "kind is adapter, ssf or vpt there (finetune returned above, petl validated), none sorts before 'adapter'"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if kind == "ssf":', "",
         "kind is ssf or vpt there (adapter returned above), and 'vpt' <= 'ssf' is False"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if kind == "vpt" and fam != "vit":', 'kind>="vpt"',
         "kind is adapter, ssf or vpt there, and only 'vpt' >= 'vpt'"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'if kind == "vpt" and fam != "vit":', 'fam<"vit"',
         "fam is vit or bert there (None raised just above), and 'bert' < 'vit'"),
    ],
    "ease": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if S == 0:", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "alpha / (S - 1) if S > 1 else 0.0", "",
         "S == 0 returned above, so S != 1 means S > 1"),
        (r"core/NumberReplacer$", "alpha / (S - 1) if S > 1 else 0.0", "else 1.0", _ONE_SUBSPACE),
        (r"core/NumberReplacer$", "alpha / (S - 1) if S > 1 else 0.0", "else -1.0", _ONE_SUBSPACE),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(old) == 0:", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Eq_Lt$", "if len(old) == 0:", "", _NO_OLD),
        (r"core/NumberReplacer$", "if len(old) == 0:", "len(old)==-1", _NO_OLD),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(new) == 0:", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if self.bank.n_sets == 0:", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if self.session < 0 or len(se) == 1 else se[1]", "len(se)<=1",
         "session_epochs is validated to have 1 or 2 values: <= 1 means == 1"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "while bank.n_sets < n:", "",
         "_grow_to is called with n = session + 1, which never falls below the number of sets: != means <"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "bank.set_trainable(s, s == n - 1)", "",
         "s runs over range(n_sets) and n_sets == n after the loop above: s >= n - 1 means s == n - 1"),
        (r"core/ReplaceUnaryOperator_Delete_USub$", 'get("session", -1)) + 1', '"session",1))', _SESSION_SAVED),
        (r"core/ReplaceUnaryOperator_USub_Not$", 'get("session", -1)) + 1', '"session",not1))', _SESSION_SAVED),
        (r"core/ReplaceUnaryOperator_USub_UAdd$", 'get("session", -1)) + 1', '"session",+1))', _SESSION_SAVED),
        (r"core/NumberReplacer$", 'get("session", -1)) + 1', '"session",0))', _SESSION_SAVED),
        (r"core/NumberReplacer$", 'get("session", -1)) + 1', '"session",-2))', _SESSION_SAVED),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if n > 0:", "",
         "n is session + 1 >= 0; at n == 0 (a checkpoint from before the first task) _grow_to(0) adds and changes "
         "nothing and the optimiser rebuilt over the same parameters is then loaded from the checkpoint"),
        (r"core/NumberReplacer$", "if n > 0:", "n>-1",
         "n is session + 1 >= 0; at n == 0 (a checkpoint from before the first task) _grow_to(0) adds and changes "
         "nothing and the optimiser rebuilt over the same parameters is then loaded from the checkpoint"),
    ],
    "_sessions": [
        (r"core/RemoveDecorator$", "@torch.no_grad()", "",
         "featurise (the module's one decorated function) computes nothing outside cl.models.task_keys.batched, "
         "which runs under its own torch.no_grad()"),
    ],
    "ranpac": [
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "dim = m if m > 0 else in_dim", "",
         "rp_dim is validated >= 0 (build_model): != 0 means > 0"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "torch.zeros(in_dim, m, dtype=dtype) if m > 0 else", "",
         _EMPTY_W),
        (r"core/NumberReplacer$", "torch.zeros(in_dim, m, dtype=dtype) if m > 0 else", "m>-1", _EMPTY_W),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if cfg.petl == "lora":', "",
         "petl is validated none or lora just above, and 'none' <= 'lora' is False"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(y) == 0:", "", _NEVER_NEG),
    ],
    "fecam": [
        (r"core/RemoveDecorator$", "@torch.no_grad()", "",
         "after_experience (the one decorated method) computes on eval_features' output, made under batched's own "
         "torch.no_grad() from a frozen backbone, and on buffers: nothing records a gradient either way"),
        (r"core/ReplaceUnaryOperator_(USub_UAdd|Delete_USub)$", "return F.normalize(x, dim=-1)", "",
         "x is flatten(1)-ed to 2-D just above: dimension +1 is dimension -1"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if self.session == 0 and self.cfg.tukey != "off":', "",
         "session >= 0 in after_experience (before_experience raised it from -1): <= 0 means == 0"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'self.cfg.tukey == "on" or', "",
         "tukey is auto or on there (off excluded just above), and 'auto' >= 'on' is False"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if len(f) > 1 else", "",
         "class_precision gets a class's features only when it has samples (empty classes are skipped): != 1 "
         "means > 1"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(fc) == 0:", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(exp.train_y) == 0:", "", _NEVER_NEG),
    ],
}


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


# ---------------------------------------------------------------------------------------------------
def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if not found:
        sys.exit(f"{name} not found: install the mutation extra ({TOOL}) for {sys.executable}")
    return [found]


def _files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def fresh_copy(dst: Path) -> None:
    """A copy of the working tree (tracked and untracked-not-ignored files) at ``dst``."""
    if dst.exists():
        shutil.rmtree(dst)
    for f in _files(ROOT):
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)


def test_command(m: Module, python: str) -> str:
    args = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    if not m.conftest:
        args.append("--noconftest")
    return " ".join(args + m.tests)


def test_env(work: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(work), WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES=env.get("CL_MUTATION_CUDA", ""))
    return env


def annotation_lines(source: str) -> set[tuple[int, int, int, int]]:
    """(start line, start col, end line, end col) of every type annotation in the module."""
    spans = set()
    for node in ast.walk(ast.parse(source)):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            anns += [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs if x.annotation]
            anns += [x.annotation for x in (a.vararg, a.kwarg) if x is not None and x.annotation]
            if node.returns:
                anns.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for an in anns:
            spans.add((an.lineno, an.col_offset, an.end_lineno, an.end_col_offset))
    return spans


def qualified_names(source: str) -> dict[int, str]:
    """line -> qualified name of the innermost function or class around it ("Run._save_checkpoint")."""
    out: dict[int, str] = {}

    def visit(node, prefix):
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{ch.name}"
                first = min([ch.lineno] + [d.lineno for d in ch.decorator_list])
                for ln in range(first, ch.end_lineno + 1):
                    out[ln] = name
                visit(ch, name + ".")
            else:
                visit(ch, prefix)

    visit(ast.parse(source), "")
    return out


def _inside(pos, span) -> bool:
    (l0, c0), (l1, c1) = pos
    a0, b0, a1, b1 = span
    return (l0, c0) >= (a0, b0) and (l1, c1) <= (a1, b1)


def filter_session(db: Path, m: Module, source: str) -> dict:
    """Mark as skipped the work items left out (operators, annotations, functions outside ``functions``)."""
    from cosmic_ray.work_db import WorkDB
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    excl = re.compile("|".join(f"(?:{e})" for e in EXCLUDE_OPERATORS))
    spans = annotation_lines(source)
    names = qualified_names(source)
    counts = {"operator": 0, "annotation": 0, "function": 0}
    known = set(names.values())
    for f in m.functions:
        if not any(n == f or n.startswith(f + ".") for n in known):
            print(f"warning: {m.path} has no function {f!r} (renamed? update MODULES)", file=sys.stderr)
    wdb = WorkDB(str(db), WorkDB.Mode.open)
    try:
        for item in list(wdb.pending_work_items):
            why = None
            for mu in item.mutations:
                pos = (tuple(mu.start_pos), tuple(mu.end_pos))
                if excl.match(mu.operator_name):
                    why = "operator"
                elif any(_inside(pos, s) for s in spans):
                    why = "annotation"
                elif m.functions and not any(names.get(mu.start_pos[0], "") == f or
                                             names.get(mu.start_pos[0], "").startswith(f + ".") for f in m.functions):
                    why = "function"
            if why:
                counts[why] += 1
                wdb.set_result(item.job_id, WorkResult(output=f"filtered: {why}", worker_outcome=WorkerOutcome.SKIPPED))
    finally:
        wdb.close()
    return counts


def reset_survivors(db: Path, job_ids: list[str]) -> int:
    """Forget the results of these (surviving) mutants, so that ``exec`` runs them again."""
    con = sqlite3.connect(db)
    try:
        n = sum(con.execute("DELETE FROM work_results WHERE job_id = ? AND test_outcome IN ('SURVIVED', 'survived')",
                            (j,)).rowcount for j in job_ids)
        con.commit()
        return n
    finally:
        con.close()


def collect(db: Path, m: Module, name: str, source: str) -> dict:
    from cosmic_ray.work_db import WorkDB

    lines = source.splitlines()
    equiv = [(re.compile(op), _squash(a), _squash(b), why) for op, a, b, why in EQUIVALENT.get(name, [])]
    res = {"module": name, "path": m.path, "tests": m.tests, "functions": m.functions, "killed": 0, "timeout": 0,
           "incompetent": 0, "survived": 0, "equivalent": 0, "skipped": 0, "pending": 0, "survivors": []}
    wdb = WorkDB(str(db), WorkDB.Mode.open)
    try:
        results = dict(wdb.results)
        for item in wdb.work_items:
            r = results.get(item.job_id)
            if r is None:
                res["pending"] += 1
                continue
            if r.worker_outcome.value == "skipped":
                res["skipped"] += 1
                continue
            outcome = r.test_outcome.value if r.test_outcome is not None else "incompetent"
            if outcome == "killed":
                res["timeout" if (r.output or "") == "timeout" else "killed"] += 1
            elif outcome == "incompetent":
                res["incompetent"] += 1
            else:
                mu = item.mutations[0]
                line = lines[mu.start_pos[0] - 1].strip() if mu.start_pos[0] <= len(lines) else ""
                plus_raw = " ".join(l[1:].strip() for l in (r.diff or "").splitlines()
                                    if l.startswith("+") and not l.startswith("+++"))
                plus = _squash(plus_raw)
                func = qualified_names(source).get(mu.start_pos[0])
                where = _squash(f"{line} in {func}")  # "@torch.no_grad() in SI.after_step": a line and its function
                reason = next((why for op, a, b, why in equiv
                               if op.match(mu.operator_name) and a in where and b in plus), None)
                res["equivalent" if reason else "survived"] += 1
                res["survivors"].append({"job_id": item.job_id, "line": mu.start_pos[0], "operator": mu.operator_name,
                                         "source": line, "mutated": plus_raw, "function": func,
                                         "equivalent": reason, "diff": r.diff})
    finally:
        wdb.close()
    killed = res["killed"] + res["timeout"]
    res["score_raw"] = killed / (killed + res["survived"] + res["equivalent"]) if killed + res["survived"] + res["equivalent"] else None
    res["score"] = killed / (killed + res["survived"]) if killed + res["survived"] else None
    res["survivors"].sort(key=lambda s: (s["line"], s["operator"]))
    return res


# -- the fork server: torch imported once, one forked child per mutant ------------------------------------
# Importing torch costs seconds (tens of seconds on a loaded machine), more than most mutants' tests.  With
# ``--fork-server`` a server process started with the test Python imports the third-party libraries once
# (never the project: every child imports cl/ and strategies/ afresh from the work copy, after cosmic-ray
# has written the mutant) and forks a child per mutant that runs ``pytest.main``; cosmic-ray's test command
# is a small client that waits for the child's exit status.  The outcome is the child's pytest exit code,
# exactly as with a fresh interpreter.
# torch._dynamo (imported by the first torch.func vmap / grad call, e.g. the per-sample gradients of EWC and MAS)
# costs ~6 s more; imported here once, not in every mutant's child
# timm, transformers' BERT, peft and sklearn (the pretrained-model strategies' tests: ~5 s of CPU a child, 30 s
# and more on the loaded machine) likewise; none imports the project, and none leaves a thread running (checked)
SERVER_IMPORTS = ("numpy", "torch", "torch.nn", "torch.nn.functional", "torch._dynamo", "pytest", "yaml",
                  "torchvision", "timm", "transformers", "transformers.models.bert.modeling_bert", "peft", "sklearn")


def serve(sock_path: str) -> None:
    import importlib
    import signal
    import socket as so

    for mod in SERVER_IMPORTS:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    assert not any(k == "cl" or k.startswith(("cl.", "strategies")) for k in sys.modules), "server imported the project"
    srv = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    Path(sock_path).unlink(missing_ok=True)
    srv.bind(sock_path)
    srv.listen(1)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            req = json.loads(conn.makefile().readline())
            if req.get("stop"):
                return
            pid = os.fork()
            if pid == 0:  # the child: a fresh test session in the work copy
                try:
                    srv.close()
                    os.chdir(req["cwd"])
                    sys.dont_write_bytecode = True  # a mutant's bytecode is never cached
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, 1), os.dup2(null, 2)
                    import pytest

                    rc = int(pytest.main(req["args"]))
                except BaseException:
                    rc = 99
                os._exit(rc)
            import select

            while True:  # until the child ends; a client gone (cosmic-ray's timeout killed it) kills the child
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if select.select([conn], [], [], 0.05)[0] and not conn.recv(1, so.MSG_PEEK):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    status = None
                    break
            if status is not None:
                rc = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(f"{rc if rc >= 0 else 98}\n".encode())
                except OSError:
                    pass


def client(sock_path: str, pytest_args: list[str]) -> int:
    import socket as so

    c = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    c.connect(sock_path)
    c.sendall((json.dumps({"cwd": os.getcwd(), "args": pytest_args}) + "\n").encode())
    reply = c.makefile().readline().strip()
    return int(reply) if reply else 97


class ForkServer:
    def __init__(self, python: str, work: Path, env: dict):
        self.sock = str(work.parent / f".{work.name}.sock")
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--serve", self.sock],
                                     cwd=work, env=env, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            sys.exit("the fork server did not start")

    def command(self, cmd: str) -> str:
        args = cmd.split()
        assert args[1:3] == ["-m", "pytest"], cmd
        return " ".join([sys.executable, str(Path(__file__).resolve()), "--client", self.sock, "--"] + args[3:])

    def close(self) -> None:
        try:
            import socket as so

            c = so.socket(so.AF_UNIX, so.SOCK_STREAM)
            c.connect(self.sock)
            c.sendall(b'{"stop": true}\n')
            c.close()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
        Path(self.sock).unlink(missing_ok=True)


def run_module(name: str, args) -> dict:
    m = MODULES[name]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work" / name
    db = out / f"{name}.sqlite"
    fresh_copy(work)  # always refreshed: current tests, and a clean module even after a hard kill
    source = (work / m.path).read_text()
    digest = hashlib.sha256((source + json.dumps(m.functions) + json.dumps(EXCLUDE_OPERATORS)).encode()).hexdigest()
    stamp = out / f"{name}.source-sha256"
    if args.fresh or not db.exists() or not stamp.exists() or stamp.read_text() != digest:
        db.unlink(missing_ok=True)
        stamp.write_text(digest)
        new = True
    else:
        new = False
    cmd = test_command(m, args.python)
    env = test_env(work)
    server = ForkServer(args.python, work, env) if args.fork_server else None
    run_cmd = server.command(cmd) if server else cmd
    t0 = time.perf_counter()
    base = subprocess.run(run_cmd.split(), cwd=work, env=env, capture_output=True, text=True)
    t_base = time.perf_counter() - t0
    if base.returncode != 0:
        if server:
            server.close()
            base = subprocess.run(cmd.split(), cwd=work, env=env, capture_output=True, text=True)  # its output
        print(base.stdout[-3000:], base.stderr[-3000:], sep="\n")
        sys.exit(f"{name}: the tests fail without any mutation ({cmd}); fix them first")
    timeout = max(30.0, 4 * t_base + 10)
    cfg = work / "cosmic-ray.toml"
    cfg.write_text("[cosmic-ray]\n"
                   f"module-path = {json.dumps(m.path)}\n"
                   f"timeout = {timeout:.0f}\n"
                   "excluded-modules = []\n"
                   f"test-command = {json.dumps(run_cmd)}\n"
                   "[cosmic-ray.distributor]\nname = \"local\"\n")
    if new:
        subprocess.run(_tool("cosmic-ray") + ["init", str(cfg), str(db)], cwd=work, env=env, check=True)
        skipped = filter_session(db, m, source)
        print(f"{name}: session created, left out {skipped}")
        (out / f"{name}.filtered.json").write_text(json.dumps(skipped))
    elif args.survivors:
        todo = [sv["job_id"] for sv in collect(db, m, name, source)["survivors"] if not sv["equivalent"]]
        print(f"{name}: {reset_survivors(db, todo)} surviving non-equivalent mutants to run again")
    from cosmic_ray.work_db import WorkDB

    wdb = WorkDB(str(db), WorkDB.Mode.open)
    pending = sum(1 for _ in wdb.pending_work_items)
    wdb.close()
    print(f"{name}: {pending} mutants to run, tests {t_base:.1f} s unmutated -> timeout {timeout:.0f} s; {cmd}",
          flush=True)
    try:
        if pending:
            subprocess.run(_tool("cosmic-ray") + ["exec", str(cfg), str(db)], cwd=work, env=env, check=True)
    finally:
        if server:
            server.close()
    res = collect(db, m, name, source)
    res["test_seconds"] = round(t_base, 2)
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    return res


def table(results: list[dict]) -> str:
    rows = ["| module | file | mutants run | killed | timeout | survived (non-equiv.) | equivalent | "
            "incompetent | score | raw score |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    for r in results:
        ran = r["killed"] + r["timeout"] + r["survived"] + r["equivalent"] + r["incompetent"]
        fn = f" ({', '.join(r['functions'])})" if r.get("functions") else ""
        rows.append(f"| {r['module']} | `{r['path']}`{fn} | {ran} | {r['killed']} | {r['timeout']} | {r['survived']} | "
                    f"{r['equivalent']} | {r['incompetent']} | {pct(r['score'])} | {pct(r['score_raw'])} |")
    return "\n".join(rows)


def survivors_md(results: list[dict]) -> str:
    out = []
    for r in results:
        if not r["survivors"]:
            continue
        out.append(f"\n### {r['module']}\n")
        for s in r["survivors"]:
            tag = f"equivalent: {s['equivalent']}" if s["equivalent"] else "NOT EQUIVALENT"
            mutated = f" -> `{s['mutated']}`" if s.get("mutated") else " -> (line removed)"
            out.append(f"- line {s['line']} `{s['operator']}` in `{s['function']}`: `{s['source']}`{mutated} ({tag})")
    return "\n".join(out)


def load_results(out: Path) -> list[dict]:
    """Every module's results, recounted from its session with the current ``EQUIVALENT`` list."""
    res = []
    for n, m in MODULES.items():
        db, src = out / f"{n}.sqlite", out / "work" / n / m.path
        if db.exists() and src.exists():
            r = collect(db, m, n, src.read_text())
            if r["killed"] + r["timeout"] + r["survived"] + r["equivalent"] + r["incompetent"]:
                res.append(r)
    return res


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:  # cosmic-ray's test command with --fork-server: SOCK -- pytest args
        return client(argv[1], argv[3:])
    if argv[:1] == ["--serve"]:  # SOCK
        serve(argv[1])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", "-m", action="append", choices=sorted(MODULES), help="module(s) to mutate")
    p.add_argument("--all", action="store_true", help="every module")
    p.add_argument("--list", action="store_true", help="list the modules and their tests")
    p.add_argument("--report", action="store_true", help="print the table of the modules run so far")
    p.add_argument("--survivors", action="store_true",
                   help="run the surviving non-equivalent mutants again (after new tests)")
    p.add_argument("--fresh", action="store_true", help="start the module's session over")
    p.add_argument("--out", default=os.environ.get("CL_MUTATION_OUT", "/tmp/cl-mutation"),
                   help="sessions and reports (default $CL_MUTATION_OUT or /tmp/cl-mutation, outside the repository)")
    p.add_argument("--python", default=sys.executable, help="the Python that runs the tests")
    p.add_argument("--fork-server", action="store_true",
                   help="run each mutant's tests in a child forked from a server that imported torch once "
                        "(seconds instead of tens of seconds a mutant on a loaded machine; same outcomes)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.list:
        done = {r["module"]: r for r in load_results(out)}
        for n, m in MODULES.items():
            sc = done.get(n, {}).get("score")
            fn = f" [{', '.join(m.functions)}]" if m.functions else ""
            print(f"{n:13} {m.path}{fn}\n{'':13} tests: {' '.join(m.tests)}"
                  f"{'' if sc is None else f'   score {100 * sc:.1f}%'}")
        return 0
    names = sorted(MODULES) if args.all else (args.module or [])
    if not names and not args.report:
        p.error("give --module NAME (see --list), --all or --report")
    for n in names:
        r = run_module(n, args)
        print(table([r]))
    results = load_results(out)
    if results:
        md = "## Mutation scores\n\n" + table(results) + "\n\n## Surviving mutants\n" + survivors_md(results) + "\n"
        (out / "summary.md").write_text(md)
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
