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
_O2 = "tests/test_ocl2.py"  # scr, pcr, ocm, onpro, _contrastive: the config checks, then each module's own tests
_O2_CFG = ("bad_choices_name_the_field_and_the_choices", "bad_numbers_name_the_field", "ocm_needs_boundaries_and_says_so")
_O1 = "tests/test_ocl1.py"
_P1, _S2M = "tests/test_ptm1.py", "tests/test_strategies2_mechanism.py"
_K = "tests/test_strategies_kalman.py"
_KFAST = [f"{_K}::test_{t}" for t in (  # ~4 s; test_test_then_train_prediction_never_uses_its_label (~10 s) goes last
    "predict_and_update_match_joint_gaussian_conditioning", "joseph_form_gives_the_same_posterior",
    "gamma_one_is_bayesian_linear_regression", "gamma_zero_resets_to_the_prior_each_step",
    "gamma_gradient_matches_finite_differences", "mc_predictive_probabilities", "prediction_uses_the_prior_quantities",
    "gamma_step_goes_down_on_a_contradicting_batch_and_up_on_a_consistent_one",
    "learned_gamma_is_lower_on_a_non_stationary_stream", "kalman_ft_trains_the_backbone_with_the_filter_state_fixed",
    "prediction_and_training_see_the_same_features")]
_TF = "tests/test_task_free_contract.py::test_every_strategy_on_a_hidden_stream_runs_without_boundaries_or_refuses"
_TFB = "tests/test_task_free_contract.py::test_boundary_options_refuse_task_free_streams_and_name_the_alternative"
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
    "colour": Module("cl/data/colour.py", ["tests/test_colour.py"]),  # SCR / PCR's colour jitter
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
                                      "tests/test_er_exclude_current.py",
                                      "tests/test_task_free_contract.py::test_a_task_free_declaration_covers_only_"
                                      "the_hooks_of_the_class_that_makes_it",
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
    "_task_il": Module("strategies/_task_il.py", [f"{_RI}::test_pnn_freezes_earlier_columns_and_outputs",
                                                  f"{_RI}::test_resume_from_a_boundary_is_exact[pnn]"]),
    "podnet": Module("strategies/podnet.py", [f"tests/test_podnet.py::test_{t}" for t in (  # not the 15 s ViT test
        "pod_spatial_matches_hand_computation_on_two_stages", "pod_spatial_pools_width_and_height_separately",
        "lsc_logits_match_hand_computation_with_two_proxies", "nca_loss_matches_hand_computation_in_both_forms",
        "nca_gradient_is_finite_with_unseen_classes_and_a_learned_scale", "stage_hooks_give_each_blocks_output_and_are_removed",
        "boundary_imprints_proxies_keeps_old_ones_fixed_and_finetunes_the_classifier_only",
        "distillation_is_zero_for_the_unchanged_model_and_grows_when_it_moves",
        "bad_values_are_config_errors_naming_the_field", "backbone_without_stages_is_a_config_error_naming_backbone_name",
        "task_free_stream_is_refused_naming_scenario_boundaries", "two_experience_class_il_run_finishes_with_finite_accuracy",
        "resume_from_a_boundary_is_exact_with_the_cnn")]),
    "_exemplars": Module("strategies/_exemplars.py", [  # its users' memory tests, after test_mutation_exemplars.py
        "tests/test_mutation_lucir.py::test_lucir_memory_follows_the_budget_and_classifies_by_nme_when_asked",
        "tests/test_mutation_lucir.py::test_lucir_state_restores_lambda_memory_and_means",
        "tests/test_mutation_icarl.py::test_icarl_budget_is_k_over_the_seen_classes_and_a_returning_class_is_not_reherded",
        "tests/test_mutation_icarl.py::test_icarl_state_restores_memory_means_and_teacher",
        "tests/test_mutation_bic.py::test_bic_validation_is_one_exemplar_in_val_every_by_rank",
        "tests/test_mutation_bic.py::test_bic_state_restores_the_bias_layer_and_memory"]),
    # mir / gss / aser / rar / _rar / slda: the mechanism tests of test_ocl1.py / test_ocl3.py that exercise
    # the module (test_ocl1.py's others run the other strategies), then its online + offline run
    "mir": Module("strategies/mir.py", [f"{_O1}::test_mir_{t}" for t in (
        "retrieves_the_samples_whose_loss_rises_most_under_the_virtual_step",
        "step_replays_the_retrieved_samples_and_keeps_batchnorm_stats",
        "exclude_current_needs_boundaries_and_excludes_the_current_experience")] + [
        f"{_O1}::test_bad_values_are_config_errors_naming_the_field[mir-subsample-{v}]" for v in ("0-words0", "5-words1")] + [
        f"{_O1}::test_runs_online_task_free_and_offline[mir]"]),
    "gss": Module("strategies/gss.py", [f"{_O1}::test_gss_{t}" for t in (
        "fills_with_scores_then_rejects_an_aligned_batch", "keeps_the_gradient_diverse_sample_when_the_buffer_is_full")] + [
        f"{_O1}::test_bad_values_are_config_errors_naming_the_field[gss-{v}]" for v in (
            "mem_strength-0-words2", "sim_threshold-1.5-words3")] + [f"{_O1}::test_runs_online_task_free_and_offline[gss]"]),
    "aser": Module("strategies/aser.py", [f"{_O1}::test_aser_{t}" for t in (
        "retrieval_scores_are_knn_shapley_combinations",
        "update_replaces_the_lowest_value_buffer_sample_by_a_valuable_incoming_one")] + [
        f"{_O1}::test_bad_values_are_config_errors_naming_the_field[aser-{v}]" for v in ("aser_type-asvx-words4", "k-0-words5")] + [
        f"{_O1}::test_runs_online_task_free_and_offline[aser]"]),
    "rar": Module("strategies/rar.py", [f"{_O1}::test_rar_{t}" for t in (
        "repeats_augmented_steps_with_fresh_replay_and_one_buffer_update", "augmentation_needs_images")] + [
        f"{_O1}::test_bad_values_are_config_errors_naming_the_field[rar-{v}]" for v in (
            "augment-randaugment-words6", "iterations-0-words7", "randaug_m-31-words8")] + [
        f"{_O1}::test_runs_online_task_free_and_offline[rar]"]),
    "_rar": Module("strategies/_rar.py", [f"{_O1}::test_randaugment_ops_match_their_pil_definitions",
                                          f"{_O1}::test_rar_repeats_augmented_steps_with_fresh_replay_and_one_buffer_update"]),
    "slda": Module("strategies/slda.py", ["tests/test_ocl3.py::test_slda_online_run_task_free",
                                          "tests/test_ocl3.py::test_non_default_modes_resume_bitwise[strategy1]"]),
    "scr": Module("strategies/scr.py", [f"{_O2}::test_{t}" for t in _O2_CFG + (
        "scr_loss_is_supcon_of_the_projections_of_both_views", "scr_predict_is_nearest_mean_of_buffer_encoder_features",
        "boundary_hooks_are_ignored_when_boundaries_are_hidden", "runs_under_both_protocols[online-scr]",
        "runs_under_both_protocols[offline-scr]")]),
    "pcr": Module("strategies/pcr.py", [f"{_O2}::test_{t}" for t in _O2_CFG + (
        "pcr_step_trains_the_proxies_of_the_batch_classes_only", "runs_under_both_protocols[online-pcr]",
        "runs_under_both_protocols[offline-pcr]")]),
    "ocm": Module("strategies/ocm.py", [f"{_O2}::test_{t}" for t in _O2_CFG + (
        "runs_under_both_protocols[online-ocm]", "runs_under_both_protocols[offline-ocm]",
        "ocm_onpro_losses_finite_and_decreasing_on_a_separable_stream[ocm]")]),
    "onpro": Module("strategies/onpro.py", [f"{_O2}::test_{t}" for t in _O2_CFG + (
        "onpro_apf_mixes_replay_within_batch_and_across_close_class_pairs", "boundary_hooks_are_ignored_when_boundaries_are_hidden",
        "runs_under_both_protocols[online-onpro]", "runs_under_both_protocols[offline-onpro]",
        "ocm_onpro_losses_finite_and_decreasing_on_a_separable_stream[onpro]")]),
    "_contrastive": Module("strategies/_contrastive.py", [f"tests/test_mutation_{m}.py" for m in (
        "scr", "pcr", "ocm", "onpro")] + [f"{_O2}::test_{t}" for t in _O2_CFG + (
        "scr_loss_is_supcon_of_the_projections_of_both_views", "pcr_step_trains_the_proxies_of_the_batch_classes_only",
        "onpro_apf_mixes_replay_within_batch_and_across_close_class_pairs",
        "boundary_hooks_are_ignored_when_boundaries_are_hidden", "runs_under_both_protocols",
        "ocm_onpro_losses_finite_and_decreasing_on_a_separable_stream")]),
    "dualprompt": Module("strategies/dualprompt.py", [f"{_P1}::test_{t}" for t in (
        "dualprompt_task_t_trains_eprompt_t_only_and_test_matching_picks_closest_key",
        "dualprompt_pull_loss_moves_only_the_task_key_toward_queries", "task_free_stream_is_refused",
        "bad_config_names_field_and_choices", "resume_from_boundary_is_exact_with_paper_layers[dualprompt-kw0]")]),
    "coda_prompt": Module("strategies/coda_prompt.py", [f"{_P1}::test_{t}" for t in (
        "coda_weighted_components_hand_computed", "coda_earlier_components_frozen_later_unused_and_new_ones_orthogonal",
        "bad_config_names_field_and_choices", "resume_from_boundary_is_exact_with_paper_layers[coda-prompt-kw1]")]),
    "hide_prompt": Module("strategies/hide_prompt.py", [f"{_P1}::test_{t}" for t in (
        "hide_task_identity_inference_constructed_case", "hide_prediction_uses_the_inferred_tasks_prompt",
        "hide_contrastive_regulariser_hand_computed", "hide_prompt_init_from_previous_ensemble_and_alignment",
        "bad_config_names_field_and_choices", "resume_from_boundary_is_exact_with_paper_layers[hide-prompt-kw2]")]),
    "l2p": Module("strategies/l2p.py", [f"{_S2M}::test_{t}" for t in (
        "l2p_gradients_only_pool_and_head", "l2p_prediction_independent_of_batch_unless_batchwise",
        "prompts_leave_frozen_model_unchanged", "l2l_gradients_only_selected_adapters_keys_and_head",
        "prompt_lr_moves_the_pool_entries_at_their_own_rate", "prompt_lr_default_is_one_rate_and_bad_values_name_the_field")] + [
        "tests/test_correctness_issue13.py::test_l2p_readout_default_follows_the_backbone_family",
        "tests/test_strategies2_engine.py::test_smoke_vit[l2p]", "tests/test_strategies2_engine.py::test_smoke_vit[l2l]"]),
    "sprompts": Module("strategies/sprompts.py", [f"{_S2M}::test_{t}" for t in (
        "sprompts_gradients_only_current_prompt_and_head", "prompts_leave_frozen_model_unchanged")] + [
        "tests/test_strategies2_engine.py::test_smoke_vit[sprompts]"]),
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
    "slca": Module("strategies/slca.py", [f"tests/test_ptm3.py::test_{t}" for t in (
        "slca_backbone_moves_at_a_hundredth_of_the_head_lr_and_old_rows_stay",
        "slca_alignment_trains_only_the_head_on_class_gaussian_samples", "bad_config_is_a_config_error_naming_field_and_choices",
        "vit_backbone_runs_and_adapts_the_attention[slca-kw0]")] + [
        "tests/test_reliability_state.py::test_every_strategy_resumes_bitwise_with_declared_state[slca]"]),
    "inflora": Module("strategies/inflora.py", [f"tests/test_ptm3.py::test_{t}" for t in (
        "inflora_update_lies_orthogonal_to_earlier_tasks_inputs", "inflora_trains_only_b_and_the_head",
        "inflora_refuses_a_cnn_naming_the_backbones_that_work", "bad_config_is_a_config_error_naming_field_and_choices",
        "vit_backbone_runs_and_adapts_the_attention[inflora-kw1]", "inflora_on_minilm_adapts_key_and_value")] + [
        "tests/test_reliability_state.py::test_every_strategy_resumes_bitwise_with_declared_state[inflora]"]),
    "lae": Module("strategies/lae.py", [f"tests/test_ptm3.py::test_{t}" for t in (
        "lae_offline_module_is_the_ema_of_the_online_one", "lae_freezes_the_online_module_for_the_first_epochs_of_later_tasks",
        "bad_config_is_a_config_error_naming_field_and_choices", "vit_backbone_runs_and_adapts_the_attention[lae-kw2]")] + [
        "tests/test_reliability_state.py::test_every_strategy_resumes_bitwise_with_declared_state[lae]"]),
    "ssiat": Module("strategies/ssiat.py", [f"tests/test_strategies2_mechanism.py::test_{t}" for t in (
        "ssiat_drift_exact_for_translation", "ssiat_drift_matches_kernel_formula_for_linear_shift",
        "ssiat_shifts_old_means_with_same_images_before_and_after", "ssiat_gaussian_samples_follow_class_statistics",
        "ssiat_gradients_only_adapter_and_classifier")] + [
        "tests/test_correctness_issue13.py::test_ssiat_session_epochs_and_cosine_schedule",
        "tests/test_strategies2_engine.py::test_smoke_vit[ssiat]", "tests/test_strategies2_engine.py::test_smoke_minilm[ssiat]",
        "tests/test_reliability_state.py::test_every_strategy_resumes_bitwise_with_declared_state[ssiat]"]),
    # color: test_mutation_color.py alone (tiny backbones, peft on a 2-layer MLP); the ViT / EfficientNet / engine
    # cases of test_strategies2_{mechanism,engine}.py cost their files' collection (timm, every issue-6 strategy)
    "color": Module("strategies/color.py", []),
    # kalman .. finetune (mut-misc): the fast mechanism tests first, whole runs (engine, resume, task-free) last
    "kalman": Module("strategies/kalman.py", _KFAST + [f"tests/test_correctness_issue13.py::test_kalman_{t}" for t in (
        "gamma_moves_under_the_new_parametrisation", "gamma_one_stays_static")] + [
        f"{_TF}[kalman]", f"{_TF}[kalman-ft]", f"{_K}::test_test_then_train_prediction_never_uses_its_label",
        "tests/test_resume.py::test_resume_exact_for_other_strategies[kalman]"]),
    "_kalman_filter": Module("strategies/_kalman_filter.py", _KFAST + [
        f"{_K}::test_test_then_train_prediction_never_uses_its_label"]),
    "center_loss": Module("strategies/center_loss.py", [
        f"tests/test_strategies_heads_pec_center.py::test_center_loss_{t}" for t in (
            "centres_learned_in_task_1_then_frozen_with_their_classifier_rows", "penalty_pulls_features_to_the_centres",
            "with_replay_uses_the_buffer")] + [
        f"{_TFB}[center-loss-freeze-strategy.freeze=false]", f"{_TF}[center-loss]",
        "tests/test_resume.py::test_resume_exact_for_other_strategies[center-loss]"]),
    "joint": Module("strategies/joint.py", ["tests/test_engine.py::test_er_beats_finetune_and_joint_beats_both", f"{_TF}[joint]",
                                            "tests/test_resume.py::test_resume_reproduces_uninterrupted_result[joint-protocol2]"]),
    "linear_probe": Module("strategies/linear_probe.py", ["tests/test_features.py::test_linear_probe_run_through_engine",
                                                          f"{_TF}[linear-probe]"]),
    "recency": Module("strategies/recency.py", [
        "tests/test_correctness_issue13.py::test_recency_baseline_predicts_the_recent_majority_label", f"{_TF}[recency]"]),
    "_boundaries": Module("strategies/_boundaries.py", [_TFB, f"{_TF}[center-loss]", f"{_TF}[lwf]", f"{_TF}[agem]"]),
    "finetune": Module("strategies/finetune.py", ["tests/test_engine.py::test_er_beats_finetune_and_joint_beats_both",
                                                  f"{_TF}[finetune]"]),
}
for _name, _file in (("der", "der"), ("derpp", "der"), ("gem", "gem"), ("agem", "agem"), ("gdumb", "gdumb"),
                      ("er_aml", "er_aml"), ("engine", "engine_phases"), ("sweep-runner", "sweep_runner"),
                      ("online", "online"), ("prd", "prd"), ("pec", "pec"),
                      ("_reg", "reg"), ("ewc", "ewc"), ("si", "si"), ("mas", "mas"), ("rwalk", "rwalk"), ("lwf", "lwf"),
                      ("lwf_mc", "lwf"), ("icarl", "icarl"), ("bic", "bic"), ("lucir", "lucir"),
                      ("xder", "xder"), ("scr", "scr"), ("pcr", "pcr"), ("ocm", "ocm"), ("onpro", "onpro"),
                      ("_contrastive", "contrastive_replay"), ("_task_il", "task_il"), ("pnn", "pnn"),
                      ("rmn", "rmn"), ("packnet", "packnet"), ("hat", "hat"), ("hnet", "hnet"), ("cl2r", "cl2r"),
                      ("mir", "mir"), ("gss", "gss"), ("aser", "aser"), ("rar", "rar"), ("_rar", "rar_augment"),
                      ("dualprompt", "dualprompt"), ("coda_prompt", "coda_prompt"), ("hide_prompt", "hide_prompt"),
                      ("l2p", "l2p"), ("sprompts", "sprompts"), ("_boundaries", "boundaries"),
                      ("recency", "recency"), ("joint", "joint"), ("linear_probe", "linear_probe"),
                      ("center_loss", "center_loss"), ("_kalman_filter", "kalman_filter"), ("kalman", "kalman"),
                      ("_exemplars", "exemplars"), ("podnet", "podnet"), ("color", "color"), ("slca", "slca"),
                      ("inflora", "inflora"), ("lae", "lae"), ("ssiat", "ssiat"), ("aper", "aper"),
                      ("_sessions", "sessions"), ("ease", "ease"), ("ranpac", "ranpac"), ("fecam", "fecam"),
                      ("_closed_form", "closed_form")):  # the tests written from their first
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
_SEED_OFFSET = ("another deterministic seed of the same kind: still a function of the run seed that differs between "
                "run seeds and between classes (k-means) or boundaries (the finetuning shuffle), as the tests check; "
                "no seed is more right than another")
_TOGETHER = ("the teacher and old_classes are set together (after_experience, load_extra_state): both empty before "
             "the first boundary, both set after it (as in lwf)")
_ALL_GRADS = ("every trained parameter gets a gradient in each backward (the encoder and the projection / the proxies, "
              "all of whose rows the loss indexes), so zeroed and absent gradients step alike")
_EMPTY_PAIR = ("accepted: a pair with count 0 then appends empty tensors (0 rows): the same batch; the generator only "
               "advances by a few more draws (the same distribution)")
_NO_CORRECTION = ("accepted: reached with diff == 0, the branch changes counts[...[:0]], no element: the same counts; "
                  "the generator only advances by one randperm (the same distribution)")
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
    "colour": [
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "s = torch.where(v > eps, c / v.clamp_min(eps)", "",
         "v >= 0: v == eps has measure zero, and at v = 0 both branches give c / eps = 0"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "h = torch.where(c > eps, h / 6,", "",
         "c >= 0: c == eps has measure zero, and at c = 0 every branch's numerator is 0"),
        (r"core/ReplaceBinaryOperator_Mod_(Add|Sub)$", "h = torch.stack([((g - b) / cs) % 6,", "",
         "a shift by 6 before h / 6 is a whole turn, which the final % 1.0 removes"),
        (r"core/NumberReplacer$", ".gather(1, arg[:, None])[:, 0]", "[:, -1]",
         "the gathered dimension has size 1: index -1 is index 0"),
        (r"core/(NumberReplacer|ReplaceBinaryOperator_Mod_(Div|Mul))$", "h = torch.where(c > eps, h / 6, torch.zeros_like(h)) % 1.0",
         "", "h / 6 is in [0, 1) already; the % 1.0 only guards a rounding to exactly 1.0, the same hue for "
             "hsv_to_rgb (periodic in the hue)"),
        (r"core/NumberReplacer$", "s = (hsv[:, 1] * f.view(-1, 1, 1)).clamp(0, 1)", "clamp( -1, 1)",
         "s >= 0 and f >= 0: the lower bound never binds"),
        (r"core/NumberReplacer$", "lambda y: (y * c.view(-1, 1, 1, 1)).clamp(0, 1),", "clamp( -1, 1)",
         "y in [0, 1] and c >= 0: the lower bound never binds"),
        (r"core/NumberReplacer$", "g = gray(y) if y.shape[1] == 3 else y.mean(1, keepdim=True)", "y.mean( 2, keepdim=True)",
         "the next line averages over (1, 2, 3): a mean over H first is the same overall mean"),
        (r"core/ReplaceComparisonOperator_Eq_(LtE|Lt|GtE|Gt)$", 'if library == "kornia"', 'library<="kornia"',
         "the library is validated to be kornia or torchvision, and 'torchvision' <= 'kornia' is False: same branch"),
        (r"core/ReplaceComparisonOperator_Eq_(LtE|Lt|GtE|Gt)$", '(kornia_steps if library == "kornia" else', 'library<="kornia"',
         "the library is validated to be kornia or torchvision, and 'torchvision' <= 'kornia' is False: same branch"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if y.shape[1] == 3 else", "y.shape[1]<=3",
         "images have 1 or 3 channels (4+ fails the comparison either way), and for one channel the gray weights sum "
         "to 1: gray(y) = y, so the blend is the same"),
        (r"core/ReplaceComparisonOperator_Lt_LtE$", "apply = (torch.rand(n, device=dev) < p)", "",
         "a uniform draw equal to p has measure zero"),
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
    "scr": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(self.buffer) == 0: in SCR.predict", "", "a length is never negative"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'self.info.boundaries != "visible"', "",
         "boundaries is visible, hidden, blurry or gradual, and every other value sorts before 'visible'"),
        (r"core/(NumberReplacer|ReplaceUnaryOperator_USub_Invert)$", "self.means_at = -1  # the boundary's", "",
         "predict reads only means_at < 0 (recompute now): -2 and ~1 = -2 are negative too"),
        (r"core/ReplaceTrueWithFalse$", "self.optimizer.zero_grad(set_to_none=True)", "", _ALL_GRADS),
    ],
    "pcr": [
        (r"core/ReplaceTrueWithFalse$", "self.optimizer.zero_grad(set_to_none=True)", "", _ALL_GRADS),
    ],
    "onpro": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if k == 0:", "",
         "a pair's count is never negative: round(p * n) >= 0, and the correction takes 1 from nonzero counts only"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "present = self.classes_mean.abs().sum(1) > 0", "",
         "a sum of absolute values is never negative, so != 0 means > 0"),
        (r"core/ReplaceComparisonOperator_Eq_Lt$", "if k == 0:", "", _EMPTY_PAIR),
        (r"core/NumberReplacer$", "if k == 0:", "k == -1", _EMPTY_PAIR),
        (r"core/ReplaceComparisonOperator_Gt_GtE$", "if diff > 0:", "", _NO_CORRECTION),
        (r"core/NumberReplacer$", "if diff > 0:", "diff > -1", _NO_CORRECTION),
        (r"core/ReplaceComparisonOperator_Lt_(NotEq|LtE)$", "elif diff < 0:", "", _NO_CORRECTION),
        (r"core/NumberReplacer$", "elif diff < 0:", "diff < 1", _NO_CORRECTION),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.info.boundaries == "visible":', "",
         "boundaries is visible, hidden, blurry or gradual, and every other value sorts before 'visible'"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if n_prob > 0:", "",
         "n_prob = n - len(xb) >= 0 (len(xb) <= n_base <= n); at 0 the block gives zero counts, draws nothing and "
         "adds no row"),
        (r"core/NumberReplacer$", "if n_prob > 0:", "n_prob > -1", "n_prob is never negative: > -1 means >= 0 (see above)"),
        (r"core/NumberReplacer$", "p = F.softmax(1 / torch.pdist(means), 0)", "pdist(means), -1)",
         "torch.pdist returns a 1-D vector: its dimension -1 is dimension 0"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "return self.boundaries_seen == 0", "", "a count is never negative"),
        (r"core/ReplaceComparisonOperator_Lt_LtE$", "lam = lam * (torch.rand(len(xb), device=dev) < cfg.mixup_p)", "",
         "accepted: torch.rand is uniform on [0, 1): < p and <= p differ only when a draw equals p exactly "
         "(probability 2**-24 a draw in float32)"),
        (r"core/ReplaceComparisonOperator_LtE_Lt$", "if torch.rand(()) <= cfg.mixup_p:", "",
         "accepted: torch.rand is uniform on [0, 1): <= p and < p differ only when the draw equals p exactly "
         "(probability 2**-24 in float32)"),
    ],
    "_contrastive": [
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "return self.cfg.rotations if x.dim() == 4 else 1", "",
         "accepted: the batches are 2-D (features, token ids) or 4-D (images); only a 5-D batch, which no scenario "
         "gives and ocm_rotations does not rotate, would tell >= 4 from == 4"),
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
    "er": [
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'if self.cfg.exclude_current and self.info.boundaries != "visible":',
         "<", 'every other valid boundary mode ("hidden", "blurry", "gradual") sorts before "visible": != and < agree '
         "on every value the scenario config accepts"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(self.buffer) == 0:", "<=",
         "a length is never negative: == 0 and <= 0 agree"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(keep) == 0:", "<=",
         "a length is never negative: == 0 and <= 0 agree"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'keep = (items["e"] != self.exp_index).nonzero().squeeze(1)', "<",
         "experience indices only grow along a stream (the stored samples' e is at most the current index), so "
         "'not the current experience' and 'an earlier experience' select the same samples"),
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
    ],    "mir": [
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'self.info.boundaries != "visible": in MIR.setup', "",
         "the boundary kinds are visible, hidden, blurry and gradual (cl/data/settings.py BOUNDARIES): every other "
         "kind sorts before 'visible', so < 'visible' means != 'visible'"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'keep = (items["e"] != self.exp_index)', "",
         "a stored sample's experience index is the one it was added in, never after the current one "
         "(experiences come in order): != means <"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(self.buffer) == 0: in MIR.candidates", "",
         "a length is never negative"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(keep) == 0: in MIR.candidates", "",
         "a length is never negative"),
        (r"core/ReplaceTrueWithFalse$", "self.optimizer.zero_grad(set_to_none=True) in MIR.train_step", "",
         "every trainable parameter of the model is in the incoming batch's loss, so its backward writes every "
         ".grad before the virtual step reads it: zeroed or None before, the gradients, scores and step are the same"),
    ],
    "aser": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if self.cfg.aser_type == "asv": in ASER.retrieval_scores', "",
         "aser_type is validated in (asvm, asv, neg_sv): 'asvm' and 'neg_sv' sort after 'asv', so <= 'asv' means "
         "== 'asv'"),
        (r"core/NumberReplacer$", "coop = torch.zeros(1, len(cand), device=adv.device)", "torch.zeros( 2,",
         "a zero cooperative value of any number of rows: its mean and max over rows are 0 either way"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "if len(y) and len(buf) == buf.capacity: in ASER.after_step", "",
         "the buffer's length never exceeds its capacity: >= means =="),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.cfg.aser_type == "neg_sv": in ASER.retrieval_scores', "",
         "aser_type is validated in (asvm, asv, neg_sv) and 'neg_sv' sorts last: >= 'neg_sv' means == 'neg_sv'"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(ev) == 0:  # every slot is a candidate", "",
         "a length is never negative"),
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'if self.cfg.aser_type != "neg_sv": in ASER.retrieval_scores', "",
         "aser_type is validated in (asvm, asv, neg_sv) and 'neg_sv' sorts last: < 'neg_sv' means != 'neg_sv'"),
        (r"core/ReplaceComparisonOperator_Eq_(Lt|LtE)$", "if len(self.buffer) == 0: in ASER.retrieve", "",
         "the shortcut only skips to the random draw's check, and an empty buffer's sample is {} (an empty "
         "buffer has offered nothing: n_seen = 0 <= capacity)"),
        (r"core/NumberReplacer$", "if len(self.buffer) == 0: in ASER.retrieve", "== -1",
         "the shortcut only skips to the random draw's check, and an empty buffer's sample is {} (an empty "
         "buffer has offered nothing: n_seen = 0 <= capacity)"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(y) and len(buf) == buf.capacity: in ASER.after_step", "",
         "samples are left after the fill only when the buffer is full (the fill takes room = capacity - len of "
         "them): with len(y) > 0, len <= capacity and len == capacity agree"),
        (r"core/ReplaceComparisonOperator_Gt_(NotEq|GtE)$", "if room > 0: in ASER.after_step", "",
         "room = capacity - len >= 0; at room 0 the mutants add x[:0], an empty batch the buffer ignores, "
         "and pass the whole batch on, as the original"),
        (r"core/NumberReplacer$", "if room > 0: in ASER.after_step", "if room > -1",
         "room = capacity - len >= 0; at room 0 the mutant adds x[:0], an empty batch the buffer ignores, "
         "and passes the whole batch on, as the original"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in ASER.update_by_sv", "",
         "update_by_sv computes on raw inputs and on features taken under ASER.features' own torch.no_grad: "
         "nothing records a graph either way"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if buf.capacity == 0: in ASER.after_step", "",
         "the capacity is never negative (buffer_size is validated >= 0; ReservoirBuffer refuses a negative one)"),
        (r"core/NumberReplacer$", "ev = by.new_zeros(0) in ASER.retrieval_scores", "new_zeros( 1)",
         "ev is replaced for asvm / asv; for neg_sv it is not used: one more slot in the eval-mode feature pass "
         "(per-sample features) changes no other row, and neg_sv reads only the incoming and candidate rows"),
    ],
    "_rar": [
        *[(r"core/NumberReplacer$", 'RANGES = {"autocontrast": (0, 1), "equalize": (0, 1), "invert": (0, 1)',
           f'"{op}": ({a}, {b})', "autocontrast, equalize and invert take no magnitude: value() is never called for "
           "them, so their RANGES entries are never read")
          for op in ("autocontrast", "equalize", "invert") for a, b in ((1, 1), (-1, 1), (0, 2), (0, 0))],
        (r"core/NumberReplacer$", "hist = torch.zeros(n * c, 256, device=u.device)", "torch.zeros(n * c, 257,",
         "the values are integers 0..255: a 257th bin stays empty, is never the last non-empty one and is never "
         "gathered, so the step and the lookup table are the same"),
        (r"core/NumberReplacer$", '"solarize_add": torch.where(added >= 128, 255 - added, added) / 255', "/ 256",
         "solarize_add's grey levels are at most 127 (below 128 kept, from 128 up inverted): k / 256 re-quantised "
         "by apply_ops' final round(255 x) is k again for every k <= 127"),
        (r"core/NumberReplacer$", 'added = (u + value("solarize_add", m)).clamp(0, 255).floor()', "clamp(0, 256)",
         "a sum clamped to 256 instead of 255 is solarised (>= 128) to -1 instead of 0, and apply_ops' final "
         "quantisation clamps it to 0: the same image"),
        (r"core/NumberReplacer$", "return (x * 255).round().clamp(0, 255) in _q", "clamp(0, 256)",
         "_q's inputs are in [0, 1] (the input is clamped in __call__, every blend is clamped, the other operations "
         "stay in range): round(255 x) is never above 255"),
        (r"core/NumberReplacer$", "y = y.clamp(0, 1) in RandAugment.__call__", "clamp(0, 2)",
         "apply_ops quantises its input with a clamp to [0, 255] first (x = _q(x01) / 255): values above 1 "
         "become 1 there either way"),
    ],
    "gss": [
        (r"core/NumberReplacer$", "y[None], self.vectorize)[0] in GSS.batch_grad", "[-1]",
         "group_grads of one group (x[None]) returns one row: [-1] is [0]"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if n == 0 in GSS.admit", "",
         "n is the buffer's length, never negative"),
        (r"core/NumberReplacer$", "self.batch_grad(x, y)[None])[0] < self.cfg.sim_threshold", "[ -1]",
         "max_cosine of the one batch gradient (batch_grad(...)[None]) has one entry: [-1] is [0]"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "if n < cap: in GSS.admit", "",
         "the buffer's length never exceeds its capacity: != cap means < cap"),
        (r"core/NumberReplacer$", "w = (scores - scores.min()) / (scores.max() - scores.min() + 0.01)", "+ 1.01",
         "the weights only feed torch.multinomial, which normalises them: a denominator of max - min + 1.01 "
         "instead of + 0.01 scales every weight alike (both positive; the 1e-12 floor aside)"),
        (r"core/ReplaceBinaryOperator_Div_Mul$", "w = (scores - scores.min()) / (scores.max() - scores.min() + 0.01)",
         "", "the weights only feed torch.multinomial, which normalises them: multiplying by the positive "
             "max - min + 0.01 instead of dividing scales every weight alike (the 1e-12 floor aside)"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in GSS.admit", "",
         "nothing in admit carries a graph: the gradients come from torch.autograd.grad / vmap(grad) without "
         "create_graph, the scores are cosines of those, and the inputs are the raw batch"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if cap == 0: in GSS.admit", "",
         "the capacity is never negative (buffer_size is validated >= 0; ReservoirBuffer refuses a negative one)"),
    ],
    "rar": [
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if kind == "randaug": in RAR.setup', "",
         "augment is validated in AUGMENTS (randaug, none, crop_flip, crop_flip_jitter, pcr): every other kind "
         "sorts before 'randaug', so >= 'randaug' means == 'randaug'"),
        (r"core/ReplaceTrueWithFalse$", "self.optimizer.zero_grad(set_to_none=True) in RAR.train_step", "",
         "every trainable parameter of the model is in each iteration's loss (backbone + head over the batch), "
         "so backward writes every .grad: zeroed or None before it, the gradients and the step are the same"),
    ],
    # -- the isolation baselines (mut-iso)
    "pnn": [
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if i > 0: in PNNModel.column", "",
         "i comes from enumerate (never negative), so i != 0 means i > 0"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "if k < t:", "",
         "k runs over range(t + 1), so k != t means k < t"),
    ],
    "rmn": [
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.task > 0: in RMN.train_step", "",
         "self.task is a task index, never negative: != 0 means > 0"),
        *[(r"core/NumberReplacer$|core/ReplaceComparisonOperator_Gt_GtE$", "if self.task > 0: in RMN.train_step", b,
           "only the restore of the frozen weights after the step survives this (the other two `if self.task > 0` "
           "are killed: BatchNorm and biases train on task 0): at task 0 no map is fixed yet (used is all False), "
           "so torch.where(used, snapshot, w) is w") for b in ("if self.task > -1:", "if self.task >= 0:")],
        (r"core/ReplaceFalseWithTrue$", "self.model.maps(self.task, self.cfg.threshold, ste=False)): in RMN.after_experience",
         "", "the straight-through map m + s - s.detach() has exactly the value m (s - s is 0), and after_experience "
         "runs under no_grad: the same boolean map"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in RMN.after_experience", "",
         "after_experience only ORs boolean maps (maps(ste=False) is a thresholded comparison, no autograd graph) "
         "into boolean tensors: nothing there records a graph"),
    ],
    "packnet": [
        (r"core/ReplaceComparisonOperator_GtE_Eq$", "last = self.task + 1 >= self.info.n_experiences", "",
         "task indices run 0 .. n_experiences - 1, so task + 1 never exceeds n_experiences: >= means =="),
        (r"core/NumberReplacer$", "ratio = 0.0 if last and not self.cfg.prune_last else self.cfg.prune_ratio", "-1.0",
         "a ratio of -1 makes k = round(-count) <= 0, and k > 0 just below then prunes nothing, as ratio 0 does"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if k > 0: in PackNet.prune", "",
         "k = round(ratio * count) with ratio 0 or prune_ratio, validated in [0, 1): k is never negative, so != 0 means > 0"),
        *[(r"core/ReplaceComparisonOperator_Eq_LtE$|core/ReplaceComparisonOperator_Gt_NotEq$", a, "",
           "owner holds 0 (free) or the number of the task that owns the weight (task + 1 >= 1), never a negative "
           "value: <= 0 means == 0 and != 0 means > 0") for a in ("self.owner[n] == 0", "(o > 0).float().mean()",
                                                                  "{n: o == 0 for n, o in self.owner.items()}")],
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.task > 0:", "",
         "self.task is a task index, never negative: != 0 means > 0"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", "self._begin_phase({n: o == self.task + 1 for n, o in self.owner.items()})",
         "", "at task t's retraining no weight has an owner above t + 1 (owners are given at each task's pruning, and "
         "later tasks have not run), so >= t + 1 means == t + 1"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.cfg.retrain_epochs > 0:", "",
         "retrain_epochs is validated >= 0 in setup, so != 0 means > 0"),
    ],
    "hat": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if self.batches == 0:", "",
         "batches is 0 (set at a boundary) or the positive count computed from the first batch, never negative: "
         "<= 0 means == 0"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if t > 0: in HAT.train_step", "",
         "t is self.task, a task index, never negative: != 0 means > 0"),
        (r"core/ReplaceTrueWithFalse$", "self.optimizer.zero_grad(set_to_none=True) in HAT.train_step", "",
         "every parameter of HATModel takes part in the forward (one embedding table for all tasks, every stage, the "
         "head), so backward writes every gradient over the zeros; the BatchNorm ones that a later task drops are "
         "set to None after backward, and zero_grad(set_to_none=False) leaves a None alone: the same step"),
    ],
    "hnet": [
        *[(r"core/NumberReplacer$|core/ReplaceComparisonOperator_Gt_(NotEq|GtE)$", "if p.numel() > 1 and p.std() > 0 else 1.0",
           b, "a one-element tensor's std is NaN (torch warns: degrees of freedom <= 0) and NaN > 0 is False, so it "
           "gets 1.0 either way; a tensor with no element adds no entry to the scale")
          for b in ("if p.numel() > 0 and", "if p.numel() != 1 and", "if p.numel() >= 1 and")],
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if p.numel() > 1 and p.std() > 0 else 1.0", "p.std() != 0",
         "a standard deviation is never negative (and is only computed here for tensors of two or more elements, "
         "where it is not NaN), so != 0 means > 0"),
        (r"core/NumberReplacer$", 'self.register_buffer("scale", scale / max(raw_std, 1e-8))', "max(raw_std, -0.",
         "accepted: a guard against a constant generated vector; the std of a randomly initialised hypernetwork's "
         "outputs is positive, so a negative floor never binds (1 + 1e-8 would: that mutant is killed)"),
    ],
    "cl2r": [
        (r"core/ZeroIterationForLoop$|core/ReplaceFalseWithTrue$", "p.requires_grad_(False) in CL2R._old_features", "",
         "the frozen copy runs only under the torch.no_grad just below and its parameters are in no optimiser: "
         "whether they require grad changes nothing"),
        (r"core/ZeroIterationForLoop$", "for p in m.parameters(): in CL2R._old_features", "",
         "the frozen copy runs only under the torch.no_grad just below and its parameters are in no optimiser: "
         "whether they require grad changes nothing"),
        (r"core/NumberReplacer$", "def features_of(self, x_raw, bs: int = 512)", "",
         "the batch size of an eval-mode, no-grad pass: each sample's features do not depend on the others in its "
         "batch (BatchNorm uses running statistics), so 511 / 513 give the same features"),
        (r"core/NumberReplacer$", "lam = self.cfg.fd_weight * math.sqrt(self.n_new / max(1, self.n_old))", "max( 0,",
         "the memory (and so this branch) exists only after a boundary, which adds the experience's classes (at "
         "least one) to n_old: n_old >= 1"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "if 0 < n < len(y): in CL2R.setup", "0 != n",
         "compat_samples is validated >= 0 a few lines above (a negative value is a ConfigError), so 0 != n means 0 < n"),
    ],
    "dualprompt": [
        (r"core/NumberReplacer$", 'return make_optimizer(self.trained_parameters(max(getattr(self, "task", 0), 0)), self.cfg)',
         '"task", -1)', "max(-1, 0) is max(0, 0): the default task of getattr is clamped to 0 either way"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.cfg.clip_grad > 0:", "",
         "clip_grad is validated >= 0 in build_model, so != 0 means > 0"),
        (r"core/NumberReplacer$", 'return make_optimizer(self.trained_parameters(max(getattr(self, "task", 0), 0)), self.cfg)',
         "), -1)", "make_optimizer runs in Strategy.__init__ (no task attribute yet: getattr gives 0) and in "
         "before_experience after task += 1 (task >= 0); task is -1 only between setup and the first "
         "before_experience, when nothing makes an optimiser"),
        (r"core/ReplaceUnaryOperator_(USub_UAdd|Delete_USub)$",
         "cos = F.cosine_similarity(q, self.model.keys[self.task].unsqueeze(0), dim=-1)", "dim=",
         "q [B, d] and the key [1, d] are 2-D: dimension 1 is dimension -1"),
        (r"core/ReplaceUnaryOperator_(USub_UAdd|Delete_USub)$",
         "return F.normalize(q, dim=-1) @ F.normalize(keys, dim=-1).t()", "dim=",
         "the queries [B, d] and the keys [n, d] are 2-D: dimension 1 is dimension -1"),
    ],
    "l2p": [
        (r"core/NumberReplacer$", "p = c / c.sum().clamp_min(1)", "clamp_min( 0)",
         "the clamp only guards all-zero counts; then 0 / 0 gives nan entries, which p > 0 leaves out: entropy 0 either "
         "way"),
        (r"core/ReplaceComparisonOperator_Gt_(NotEq|GtE)$", "ent = float(-(p[p > 0] * p[p > 0].log()).sum())", "p[p",
         "p = counts / total is never negative, so p != 0 selects the same entries as p > 0 (and p >= 0 on one side "
         "only would mismatch the shapes: a crash)"),
        (r"core/ReplaceComparisonOperator_Eq_|core/NumberReplacer$", 'lora.add(f"pool{i}", activate=(i == 0))', "",
         "L2L: pool.activate([0]) just after the loop sets every layer's adapters and makes the whole pool trainable; "
         "which adapter LoraSet calls active (pool0 or the last added) is only re-applied when a query leaves "
         "lora.disabled(), and every forward activates its selected adapters after its query"),
    ],
    "hide_prompt": [
        (r"core/NumberReplacer$|core/ReplaceBinaryOperator_(Add_Sub|Mul_Add|Mul_Sub)$",
         "g = torch.Generator().manual_seed(int(self.info.seed) * 1009 + t)", "",
         "accepted: another fixed seed per run seed and task for the alignment's Gaussian draws; which fixed seed is "
         "a convention, and pinning 1009 would test the code's text"),
        (r"core/NumberReplacer$|core/ReplaceBinaryOperator_(Add_Sub|Mul_Add|Mul_Sub)$",
         "seed = int(self.info.seed) * 7919 + int(c)", "",
         "accepted: another fixed k-means seed per run seed and class; which fixed seed is a convention, and pinning "
         "7919 would test the code's text"),
        (r"core/ReplaceComparisonOperator_Lt_(NotEq|LtE)$",
         "n_old = int(((m.task_of_class >= 0) & (m.task_of_class < t)).sum())", "task_of_class!=t",
         "after task t no class has a task above t (before_experience assigns each task's classes as it starts), so "
         "among the seen classes != t means < t"),
        (r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if t > 0 and cfg.prompt_momentum > 0:", "",
         "t >= 0 and the momentum is validated >= 0; at t = 0 or momentum 0, prompt(t, train=True) is e_t itself, so "
         "copying it into e_t changes nothing"),
        (r"core/NumberReplacer$", "if t > 0 and cfg.prompt_momentum > 0:", "prompt_momentum>-1",
         "at momentum 0 prompt(t, train=True) is e_t itself, so copying it into e_t changes nothing"),
        (r"core/NumberReplacer$", "if t > 0 and cfg.prompt_momentum > 0:", "ift>-1",
         "t >= 0, and at t = 0 prompt(0, train=True) is e_0 itself, so copying it into e_0 changes nothing"),
        *[(r"core/ReplaceComparisonOperator_Gt_(GtE|NotEq)$", "if train and t > 0 and self.momentum > 0:",
           f"self.momentum{op}0", "the momentum is validated >= 0, and at 0 the ensemble (1 - 0) e_t + 0 * mean(e_<t) "
           "is e_t exactly (values and gradient)") for op in (">=", "!=")],
        (r"core/NumberReplacer$", "if train and t > 0 and self.momentum > 0:", "self.momentum>-1",
         "at momentum 0 the ensemble (1 - 0) e_t + 0 * mean(e_<t) is e_t exactly (values and gradient)"),
    ],
    "coda_prompt": [
        (r"core/NumberReplacer$", "d = full[0].numel()", "full[ -1]",
         "every row of full (the components of one kind and layer) has the same shape: row -1 has row 0's size"),
        (r"core/NumberReplacer$", 't = max(getattr(self, "task", 0), 0)', '"task", -1',
         "max(-1, 0) = max(0, 0): the optimiser made before setup is task 0's either way"),
        (r"core/ReplaceComparisonOperator_Lt_NotEq$", "if ok < stop:", "",
         "ok = min(stop, d) <= stop, so ok != stop means ok < stop"),
        (r"core/NumberReplacer$|core/ReplaceBinaryOperator_(Add_Sub|Mul_Add|Mul_Sub)$",
         "g = torch.Generator().manual_seed(int(self.info.seed) * 1009 + self.task)", "",
         "accepted: another fixed seed per run seed and task for the Gram-Schmidt draws (tested: reproducible, "
         "and another run seed draws another init); which fixed seed is a convention, and pinning 1009 would test "
         "the code's text"),
    ],
    # -- mut-misc (kalman, _kalman_filter, center_loss, joint, linear_probe, recency, _boundaries, finetune)
    "recency": [
        (r"core/NumberReplacer$", "m.counts.index_add_(0, y,", "index_add_( -1,", "counts is 1-D: dimension -1 is dimension 0"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in RecencyModel.observe", "",
         "observe writes the constant True into the bool buffer `seen`: no tensor that requires grad takes part, "
         "so autograd records nothing with or without no_grad"),
    ],
    "linear_probe": [
        (r"core/ReplaceUnaryOperator_(USub_UAdd|Delete_USub)$", "F.normalize(self.backbone(x).float(), dim=-1)", "",
         "a backbone returns (N, out_dim) features (the linear head takes nothing else): dimension 1 is the last"),
    ],
    "_kalman_filter": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'psi = _log1m(gamma) if gamma_param == "log1m" else _logit(gamma)', "",
         "gamma_param is checked to be log1m or logit just above, and 'logit' > 'log1m' ('i' after '1'): <= 'log1m' "
         "is == 'log1m' on both"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.gamma_param == "logit":', "",
         "gamma_param is log1m or logit (checked in __init__), and 'log1m' < 'logit': >= 'logit' is == 'logit' on both"),
        (r"core/ReplaceUnaryOperator_(Delete_USub|USub_UAdd)$",
         'return torch.log_softmax((beta * mu).masked_fill(~mask, float("-inf")), -1)', "",
         "mu is the (B, K) latent mean (latent() of (B, m) features): dimension 1 is the last"),
        (r"core/NumberReplacer$", "lp = torch.log_softmax(f.masked_fill(~mask, -1e30), -1)", "1e+30",
         "1e30 + 1 and 1e30 - 1 are the same float64 as 1e30 (spacing ~1.4e14 there): the same fill value"),
        (r"core/AddNot$", "if joseph:  # (I - K Phi) A- (I - K Phi)^T", "",
         "the two forms swapped: the same posterior, as for the default below"),
        (r"core/ReplaceFalseWithTrue$", "joseph: bool = False) -> None: in KalmanHead.update", "",
         "with the optimal gain the Joseph form (I - K Phi) A- (I - K Phi)^T + s2 K K^T is the same posterior "
         "covariance as A- - K Phi A- (the tests check both forms against joint Gaussian conditioning to 1e-10): "
         "the default only changes rounding and cost (O(m^3)), no result can tell them apart"),
    ],
    "kalman": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'opt = torch.optim.Adam if cfg.hyper_optimizer == "adam" else', "",
         "hyper_optimizer is validated to sgd or adam (build_model), and 'sgd' > 'adam': <= 'adam' is == 'adam' on both"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'gopt = torch.optim.Adam if cfg.gamma_optimizer == "adam" else', "",
         "gamma_optimizer is validated to adam or sgd (build_model), and 'sgd' > 'adam': <= 'adam' is == 'adam' on both"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'cfg.gamma_objective == "gaussian" else gd', "",
         "gamma_objective is validated to mc or gaussian (build_model), and 'mc' > 'gaussian': <= 'gaussian' is "
         "== 'gaussian' on both"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'cfg.gamma_objective == "mc" else gd', "",
         "gamma_objective is validated to mc or gaussian, and 'gaussian' < 'mc': >= 'mc' is == 'mc' on both"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if cfg.finetune_loss == "mc":', "",
         "finetune_loss is validated to gaussian or mc, and 'gaussian' < 'mc': >= 'mc' is == 'mc' on both"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if cfg.gamma_log_every > 0 and self._steps", "",
         "gamma_log_every is refused below 0 by the config (an int field's generic bound, tested): != 0 is > 0"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "self._steps % cfg.gamma_log_every == 0:", "",
         "a remainder modulo a positive gamma_log_every (the branch's first condition) is never negative: <= 0 is == 0"),
        (r"core/ReplaceTrueWithFalse$", "o.zero_grad(set_to_none=True)", "",
         "each parameter these optimisers hold gets a gradient at every step that runs backward (psi, log_beta, the "
         "noise logs and the fine-tuned backbone all enter the loss) or never has one (the inert dummy): zero plus the "
         "new gradient is the new gradient, the same steps as from None"),
    ],
    "center_loss": [
        (r"core/NumberReplacer$", "n = torch.zeros(C, device=h.device).index_add_(0, y,", "index_add_( -1,",
         "n is 1-D: dimension -1 is dimension 0"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "first = (n > 0) & ~self.initialised", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "self.initialised |= n > 0", "", _NEVER_NEG),
        (r"core/NumberReplacer$", "first = (n > 0) & ~self.initialised", "(n > -1)",
         "a count is never negative, so > -1 is >= 0, equivalent as the >= mutant below"),
        (r"core/NumberReplacer$", "index_add_(0, y, h) / n.clamp_min(1)[:, None]", "clamp_min( 0)",
         "the mean is used only where n > 0 (torch.where on first, under no_grad), where clamp_min(0) and "
         "clamp_min(1) agree; the 0 / 0 = nan of the classes not in the batch is never selected"),
        (r"core/ReplaceComparisonOperator_Gt_GtE$", "first = (n > 0) & ~self.initialised", "",
         "a class not yet initialised has never been in a batch (initialised |= n > 0 at every update; the state "
         "restores both together), so its centre is still 0, and its masked mean (a zero sum over clamp_min(1)) is 0"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in CenterLoss._update_centers", "",
         "its only caller (after_step) passes the features loss() stored detached, and the centres are plain tensors "
         "that never require grad: nothing records a gradient either way"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in CenterLoss.after_experience", "",
         "it reads the head's parameters through p.detach() only; the rest is bool masks: nothing records a gradient"),
    ],
    "_boundaries": [
        (r"core/ReplaceComparisonOperator_NotEq_Lt$", 'if got != "visible":', "",
         "scenario.boundaries is validated to visible / hidden / blurry / gradual (cl/data/settings.py) and the "
         "three task-free kinds sort before 'visible': < 'visible' is != 'visible' on every valid value"),
    ],
    "color": [
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(test_x) == 0:", "", "a length is never negative"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if self.cfg.keys == "adapted":', "",
         "keys is frozen or adapted (setup), and 'adapted' sorts first: <= is =="),
        (r"core/NumberReplacer$", "d = self.model.heads[0].in_features", "",
         "every head is nn.Linear(d, n_classes) with the same d (ExpertModel): any head's in_features is d"),
        (r"core/ReplaceComparisonOperator_GtE_Eq$", "if self.task >= len(self.model.heads):", "",
         "task grows by one per experience from -1 (a restored task is one that had a head): it reaches the number "
         "of heads before it can exceed it, so the first overflow is =="),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.cfg.task_id == "oracle" and t is not None:', "",
         "task_id is keys or oracle (setup), and 'keys' sorts first: >= is =="),
        (r"core/ReplaceComparisonOperator_Eq_(Lt|LtE)$", 'lora.add(f"task{t}", activate=(t == 0))', "",
         "t counts from 0: t <= 0 is t == 0, and t < 0 activates none, where LoraSet.add activates the first "
         "adapter anyway (none active yet) and keeps it active for the others"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if self.mode == "class": in TaskKeyedExperts.after_experience', "",
         "mode is class or domain (setup), and 'class' sorts first: <= is =="),
        (r"core/RemoveDecorator$", "@torch.no_grad() in TaskKeyedExperts._task_id_accuracy", "",
         "every forward pass in it runs through _featurize, itself under no_grad, and the keys read detached "
         "features: no graph is recorded either way"),
        (r"core/NumberReplacer$", "adapter = self.expert_size(0)", "",
         "every task's expert has the same size (CoLoR: adapters of one r and target list, added together at build "
         "time; S-Prompts: prompts of one length)"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in ExpertModel.observe", "",
         "seen is a bool buffer and y integer labels: the index assignment records nothing for autograd either way"),
        (r"core/NumberReplacer$", 't = max(getattr(self, "task", 0), 0) in CoLoR.make_optimizer', "-1",
         "the max with 0 just around it maps a default of -1 to 0 too"),
        (r"core/NumberReplacer$", 't = getattr(self, "task", 0) in TaskKeyedExperts.make_optimizer', "-1",
         "the default is read only through max(t, 0) on the next line, which maps -1 to 0 too"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.cfg.keys == "frozen":', "",
         "keys is validated to frozen or adapted in setup, and 'adapted' sorts before 'frozen': >= is =="),
        (r"core/NumberReplacer$", 'lora.add(f"task{t}", activate=(t == 0))', "(t == -1)",
         "LoraSet.add activates the first adapter when none is active and keeps the active one otherwise: with no "
         "t == -1, task0 is the active adapter after the loop either way"),
    ],
    "podnet": [
        (r"core/NumberReplacer$", "_FLOOR = -1e4", "",
         "exp(-1e4 +- 1 - m) is 0 in float32 for every reachable logit m (|eta y| <= 4 |eta|): a masked entry adds "
         "nothing to the logsumexp either way, and stays finite (the gradient of eta has no NaN)"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if kind == "neg_sq_dist": in lsc_similarity', "",
         "kind is one of SIMILARITIES (validated in build_model), and 'cosine' sorts before 'neg_sq_dist': >= is =="),
        (r"core/(NumberReplacer|ReplaceBinaryOperator_(Add_Sub|Mul_Add|Mul_Sub))$",
         "cent = kmeans(f[sel], k, seed=self.info.seed * 1009 + c)", "",
         _SEED_OFFSET),
        (r"core/(NumberReplacer|ReplaceBinaryOperator_(Add_Sub|Mul_Add|Mul_Sub))$",
         "g = torch.Generator().manual_seed(self.info.seed * 1009 + len(self.old_classes))", "",
         _SEED_OFFSET),
        (r"core/ReplaceBinaryOperator_BitOr_BitXor$", "neg = z.masked_fill(target | ~valid[None, :], _FLOOR)", "",
         "a sample's target is a seen class (the head observes the batch's labels before the loss; the memory holds "
         "seen classes only): target and ~valid never overlap, so | and ^ agree"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if form == "paper": in nca_loss', "",
         "form is one of NCA_FORMS (validated in build_model), and 'code' sorts before 'paper': >= is =="),
        (r"core/NumberReplacer$", "if had_old and self.cfg.finetune_epochs > 0 and len(self.memory):", "> -1",
         "finetune_epochs is validated >= 0; with 0, finetune() takes no step: it only drops head.weight.grad (which "
         "the next step's zero_grad(set_to_none) drops anyway) and the teacher is re-taken from the unchanged model"),
        (r"core/ReplaceComparisonOperator_Gt_GtE$", "if had_old and self.cfg.finetune_epochs > 0 and len(self.memory):",
         "", "as > -1 just above: finetune_epochs is an integer >= 0, and 0 epochs take no step"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.cfg.grad_clip > 0:", "",
         "grad_clip is validated >= 0 (build_model, setup): != 0 is > 0"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if cfg.grad_clip > 0:", "",
         "grad_clip is validated >= 0 (build_model, setup): != 0 is > 0"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$",
         "if had_old and self.cfg.finetune_epochs > 0 and len(self.memory):", "",
         "finetune_epochs is validated >= 0: != 0 is > 0"),
        (r"core/ReplaceTrueWithFalse$", "opt.zero_grad(set_to_none=True) in PODNet.finetune", "",
         "zeroed or dropped, backward then fills the proxies' gradient with the same values: the same SGD step"),
    ],
    "slca": [
        (r"core/NumberReplacer$", "self._done, self._n_train = 0, 1 in SLCA.setup", "",
         "before_experience sets _done and _n_train before any train_step reads them"),
        (r"core/NumberReplacer$", "self._done, self._n_train = 0, max(len(exp.train_y), 1)", "max(len(exp.train_y), 0)",
         "the two differ only for an experience without training samples, which has no train_step to divide by it"),
        (r"core/ReplaceBinaryOperator_FloorDiv_Div$", "epoch = self._done // self._n_train", "",
         "milestones are whole numbers, and for a whole m, done / n >= m exactly when done // n >= m"),
        (r"core/NumberReplacer$|core/ReplaceComparisonOperator_Gt_(NotEq|GtE)$", "if body and cfg.backbone_lr_scale > 0 else []",
         "", "backbone_lr_scale is validated >= 0, and at 0 build_model freezes the backbone, so body is empty: the "
         "scale test never decides"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if self.cfg.ca and self.cfg.ca_epochs > 0 and", "",
         "ca_epochs is validated >= 0, so != 0 means > 0"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if cfg.backbone_lr_scale == 0:", "",
         "backbone_lr_scale is validated >= 0 just before, so <= 0 means == 0"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(fc_) == 0:", "", _NEVER_NEG),
        (r"core/ReplaceTrueWithFalse$", "opt.zero_grad(set_to_none=True) in SLCA.align_classifier", "",
         "zeroed instead of dropped gradients: backward then writes the same gradient and SGD takes the same step"),
        (r"core/ReplaceUnaryOperator_(USub_|Delete_USub$)|core/NumberReplacer$", "pos = torch.full((self.info.n_classes,), -1",
         "",
         "pos is only read at the sampled labels, which are seen classes: the fill value of the others is never read"),
        (r"core/ReplaceBinaryOperator_Add_Sub$|core/NumberReplacer$", "manual_seed(self.info.seed * 1000 + self.session)",
         "", "accepted: another fixed seed per (run seed, task), distinct across the tasks and seeds of the test either "
         "way (the collisions of seed * 1000 * task and seed - 1000 + task are tested); which fixed seed is a "
         "convention"),
    ],
    "inflora": [
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'elif family == "bert" and name.split(".")[-1] in ("key", "value"):',
         "", "family is vit, bert or mlp here: an mlp layer named key or value gets the bert branch's (name, layer, None), "
         "the same as the mlp branch's, and timm ViTs (whose qkv the first branch took) have no layer named key or value"),
        (r"core/NumberReplacer$", "r = int(((S1 ** 2).cumsum(0) / total < threshold).sum())", "cumsum( -1)",
         "S1 is 1-D: dimension -1 is dimension 0"),
        (r"core/NumberReplacer$", "return torch.cat([basis, U[:, :r]], 1)[:, :act.shape[0]]", "act.shape[ -1]]",
         "act is a square (d x d) Gram matrix"),
        (r"core/NumberReplacer$", "return torch.cat([basis, U[:, :r]], 1)[:, :act.shape[0]]", "act.shape[1]]",
         "act is a square (d x d) Gram matrix"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if r == 0:", "", "r counts directions: never negative"),
        (r"core/ReplaceFalseWithTrue$", "U, S, _ = torch.linalg.svd(hat, full_matrices=False)", "",
         "hat (act less its projection on the memory) is square: the full and the reduced SVD are the same"),
        (r"core/ReplaceBreakWithContinue$", "break in update_memory", "",
         "once the captured share reaches the threshold nothing changes it again, so continue skips every later "
         "direction too: the same r"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in InfLoRA._grams", "",
         "the forward runs in eval_features, under torch.no_grad itself, and the Gram buffers hold no gradient"),
        (r"core/ReplaceFalseWithTrue$", "U = torch.linalg.svd(C, full_matrices=False)[0][:, :m.A.shape[0]]", "",
         "C is a square Gram matrix: the full and the reduced SVD are the same"),
        (r"core/NumberReplacer$", 'setattr(parent, name.rsplit(".", 1)[-1], layer)', 'rsplit(".", 2)',
         "the last item of a right split is the last dotted name whatever the maximum number of splits"),
        (r"core/NumberReplacer$", "n = max(self.info.n_experiences, 1)", "max(self.info.n_experiences, 2)",
         "a session t is below n_experiences: with n_experiences <= 1 the only session is 0, whose threshold is lamb "
         "whatever n"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if family == "vit" and name.endswith("attn.qkv"):', "",
         "family is vit, bert or mlp here, and only 'vit' sorts at or after 'vit'"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'elif family == "bert" and name.split(".")[-1] in ("key", "value"):',
         "", "family is vit, bert or mlp here, and only 'bert' sorts at or before 'bert'"),
        (r"core/ReplaceFalseWithTrue$", "U1, S1, _ = torch.linalg.svd(act, full_matrices=False)", "",
         "act is square: the full and the reduced SVD are the same"),
        (r"core/NumberReplacer$", "A[:U.shape[1]] = U.t() / math.sqrt(3)", "U.shape[ 0]",
         "U is d x min(d, rank) and A has rank rows: A[:d] and A[:min(d, rank)] are the same rows"),
        (r"core/ReplaceComparisonOperator_Eq_(LtE|GtE)$", "if m.out_features == 3 * d else None", "",
         "a timm ViT's fused qkv has exactly 3 x in_features outputs, so <= and >= hold exactly when == does"),
    ],
    "lae": [
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'self.cfg.ensemble == "online":', "",
         "ensemble is validated to be max_prob, online or offline, and only 'online' sorts at or after 'online'"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if self.cfg.ensemble == "offline":', "",
         "ensemble is max_prob or offline here ('online' returned just before), and 'max_prob' sorts before 'offline'"),
        (r"core/ReplaceComparisonOperator_Eq_GtE$", 'if family == "vit" and cfg.blocks is not None:', "",
         "detect_family gives vit, bert, cnn or mlp, and only 'vit' sorts at or after 'vit'"),
        (r"core/NumberReplacer$", "self._done, self._n_train = 0, 1 in LAE.setup", "",
         "before_experience sets _done and _n_train before any train_step reads them"),
        (r"core/NumberReplacer$", "self._done, self._n_train = 0, max(len(exp.train_y), 1)", "max(len(exp.train_y), 0)",
         "the two differ only for an experience without training samples, which has no train_step to divide by it"),
        (r"core/ReplaceBinaryOperator_FloorDiv_Div$", "self._done // self._n_train < self.cfg.freeze_epochs", "",
         "freeze_epochs is a whole number, and for a whole k, done / n < k exactly when done // n < k"),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "self.session > 0", "",
         "train_step runs after before_experience, so the session is >= 0 and != 0 means > 0"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if self.session == 1:", "",
         "a copy at the first task too is overwritten by the copy at the second, and the offline module is not used "
         "before it (the first task predicts with the online one alone, and no EMA step runs on it)"),
    ],
    "ssiat": [
        (r"core/RemoveDecorator$", "@torch.no_grad() in SSIATModel.observe", "",
         "seen is a bool buffer: writing into it records no graph either way"),
        (r"core/NumberReplacer$", "else torch.zeros(f.shape[1], f.shape[1], dtype=f.dtype,", "f.shape[ 0], dtype",
         "a single sample's f is 1 x d: zeros(d, 1) broadcasts to the same d x d matrix when eps I is added"),
        (r"core/NumberReplacer$", "sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))", "max( 2,",
         "alignment runs from the second session, with classes of at least two sessions seen: steps = ca_epochs x "
         "seen is >= 2 whenever a batch runs"),
        (r"core/ReplaceTrueWithFalse$", "opt.zero_grad(set_to_none=True) in SSIAT.align_classifier", "",
         "zeroed instead of dropped gradients: backward then writes the same gradient and SGD takes the same step"),
        (r"core/ReplaceOrWithAnd$", "if not self.cfg.session_epochs or self._repeat <= 1:", "",
         "_repeat stays 1 unless session_epochs is set, and repeating the data once gives the data itself"),
        (r"core/NumberReplacer$", "if not self.cfg.session_epochs or self._repeat <= 1:", "self._repeat <= 0",
         "session_epochs entries are validated >= 1, so _repeat >= 1: repeating the data once gives the data itself"),
        (r"core/NumberReplacer$", "sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))", "max( 0,",
         "steps is 0 only with ca_epochs = 0, when no batch runs: the scheduler with T_max 0 is built (no division: "
         "checked) and never stepped"),
        (r"core/ReplaceComparisonOperator_GtE_Eq$", "old = self.class_session >= 0 in SSIAT.before_experience", "",
         "only old.any() is read: from the second session on the first session's classes are old, so some class has "
         "class_session 0 exactly when some has class_session >= 0"),
        (r"core/ExceptionReplacer$", "except ValueError: in make_adapter", "",
         "the caught ValueError (no LoRA family) leads to LoraSet, whose detect_family raises the same ValueError: "
         "the same error either way"),
        (r"core/ReplaceComparisonOperator_LtE_Eq$", "if not self.cfg.session_epochs or self._repeat <= 1:", "",
         "session_epochs entries are validated >= 1 (build_model), so _repeat >= 1 and <= 1 means == 1"),
        (r"core/NumberReplacer$", "else torch.zeros(f.shape[1], f.shape[1], dtype=f.dtype,", "zeros(f.shape[ 0],",
         "a single sample's f is 1 x d: zeros(1, d) broadcasts to the same d x d matrix when eps I is added"),
        (r"core/ReplaceComparisonOperator_LtE_Lt$", "if not self.cfg.session_epochs or self._repeat <= 1:", "",
         "repeating the data once gives the data itself"),
        (r"core/RemoveDecorator$", "@torch.no_grad() in SSIAT.extract", "",
         "the features come from cl.models.task_keys.batched, which runs under torch.no_grad itself"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", 'if cfg.cov == "diag":', "",
         "cov is validated to be full or diag (build_model), and 'full' <= 'diag' is False: the same branch"),
        (r"core/NumberReplacer$", "else torch.zeros_like(f[0])", "f[ -1]", "every row of f has the same shape"),
        (r"core/NumberReplacer$", "z = torch.randn(n, mu.shape[0], device=self.device)", "mu.shape[ -1]",
         "mu is 1-D: dimension -1 is dimension 0"),
        (r"core/NumberReplacer$", "sigma: float = 4.0) -> torch.Tensor:", "",
         "the default of semantic_drift's sigma: its caller passes strategy.sigma (whose default is tested)"),
        (r"core/NumberReplacer$", "self._session_done, self._session_total, self._repeat = 0, 0, 1 in SSIAT.setup", "",
         "before_experience sets _session_done and _session_total, and _repeat whenever session_epochs is set, "
         "before train_data or train_step read them (train_data reads _repeat only with session_epochs)"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "first if self.session == 0 else later", "",
         "before_experience has just incremented the session from -1: it is >= 0, so <= 0 means == 0"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if len(f) == 0:", "", _NEVER_NEG),
        (r"core/ReplaceComparisonOperator_Gt_NotEq$", "if len(f) > 1 else", "",
         "a class without samples was skipped just before: len(f) >= 1, so != 1 means > 1"),
        (r"core/ReplaceComparisonOperator_Eq_LtE$", "if L.dim() == 1 else z @ L.t()", "",
         "the stored factor is 1-D (diag variances) or 2-D (Cholesky factor), so <= 1 means == 1"),
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
    # --assert=plain: no assertion rewriting; a mutant's child writes no bytecode, so pytest would rewrite every
    # test file (conftest and helpers included) afresh for each mutant: about half of a mutant's collection time.
    # A test passes or fails the same way; only the failure messages of a bare assert are shorter.
    args = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--assert=plain"]
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
# and more on the loaded machine; peft alone ~13 s) likewise, and scipy.stats (~6 s a child for the Kalman tests);
# none imports the project, and none leaves a thread running (checked)
SERVER_IMPORTS = ("numpy", "torch", "torch.nn", "torch.nn.functional", "torch._dynamo", "pytest", "yaml",
                  "torchvision", "timm", "transformers", "transformers.models.bert.modeling_bert", "peft", "sklearn",
                  "scipy.stats")


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
    import gc

    gc.freeze()  # the libraries' objects are never collected: a child's gc.collect() (pytest runs two) skips them
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
    # bytecode for every module but the mutated one, so that a mutant's test run does not compile the whole project
    # again (the fork server's children never write bytecode; the mutated module has none: always read from source)
    subprocess.run([args.python, "-m", "compileall", "-q", "-x", rf"(/tests/|/{re.escape(m.path)}$)", str(work)],
                   cwd=work, capture_output=True)
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
