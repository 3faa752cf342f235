from __future__ import annotations

import pytest

from supervisor.domain.types import LogMatch, Progress, SignatureAction
from supervisor.logs.engines import required_literal
from supervisor.logs.progress import parse_metrics
from supervisor.logs.scanner import Catalogue, MilestoneKind
from supervisor.logs.text import MAX_TEXT

A = SignatureAction
BAR = " 45%|████▌     | 450/1000 [12:34<15:20,  1.67s/it]"
WATCHDOG = (
    "[rank16]:[E1228 15:44:53.523176693 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=264290, OpType=_ALLGATHER_BASE, NumelIn=54528000, NumelOut=218112000, "
    "Timeout(ms)=600000) ran for 600018 milliseconds before timing out."
)


@pytest.fixture(scope="module", params=["hyperscan", "regex"])
def catalogue(request: pytest.FixtureRequest) -> Catalogue:
    return Catalogue.load(engine=request.param)


def test_lines_split_on_cr_and_lf(catalogue: Catalogue) -> None:
    data = f"\r{BAR}\r{BAR}\nsrun: error: Node failure on node07\n".encode()
    [match] = catalogue.scan(data, 10)
    # line 10 is empty (before the first \r), 11 and 12 are bars.
    assert match.line == 13
    assert match.node == "node07"


def test_crlf_counts_as_two_breaks(catalogue: Catalogue) -> None:
    [match] = catalogue.scan(b"a\r\nb\r\nOSError: [Errno 28] No space left on device\r\n", 1)
    assert match.line == 5


def test_message_glued_to_tqdm_fragment(catalogue: Catalogue) -> None:
    line = f"\r{BAR}[2025-11-06 11:25:10,069] [INFO] [axolotl.train] Training completed! Saving trained model to out."
    result = catalogue.scan_chunk((line + "\n").encode(), 1)
    [match] = result.matches
    assert match.signature == "training_completed"
    assert match.line == 2
    assert match.text.startswith("[2025-11-06 11:25:10,069]")  # the bar fragment is not kept
    [milestone] = result.milestones
    assert milestone.kind is MilestoneKind.TRAINING_COMPLETED
    assert milestone.path == "out"


def test_ansi_escapes_are_stripped(catalogue: Catalogue) -> None:
    data = b"\x1b[31mtorch.OutOfMemoryError: \x1b[1mCUDA out of memory\x1b[0m. Tried\nnext\n"
    [match] = catalogue.scan(data, 1)
    assert match.signature == "cuda_oom"
    assert "\x1b" not in match.text
    assert "CUDA out of memory" in match.text


def test_escape_after_a_match_still_strips_and_keeps_every_match(catalogue: Catalogue) -> None:
    data = (
        b"srun: error: Node failure on node07\n"
        + b"plain\r" * 500
        + b"\x1b[31mOSError: [Errno 28] \x1b[1mNo space\x1b[0m left on device\n"
        + b"\x1b lone escape, then CUDA out of memory\n"
    )
    result = catalogue.scan_chunk(data, 1)
    assert [(m.signature, m.line) for m in result.matches] == [
        ("slurm_node_failure", 1),
        ("disk_full", 502),
        ("cuda_oom", 503),
    ]


def test_text_is_capped_around_the_match(catalogue: Catalogue) -> None:
    line = "x" * 5000 + " CUDA out of memory " + "y" * 5000
    [match] = catalogue.scan(line.encode() + b"\n", 1)
    assert len(match.text) <= MAX_TEXT
    assert "CUDA out of memory" in match.text


def test_binary_garbage_does_not_break_scanning(catalogue: Catalogue) -> None:
    data = bytes(range(256)) * 10 + b"\nsrun: error: Node failure on node07\n\xff\xfe\n"
    [match] = catalogue.scan(data, 1)
    assert match.signature == "slurm_node_failure"


def test_each_line_reported_once_per_signature(catalogue: Catalogue) -> None:
    line = b"NCCL error in: x.cpp:1, internal error; ncclInternalError: Internal check failed. NCCL error again\n"
    matches = catalogue.scan(line * 3, 1)
    assert [(m.signature, m.line) for m in matches] == [("nccl_error", 1), ("nccl_error", 2), ("nccl_error", 3)]


def test_flood_is_capped_per_signature() -> None:
    cat = Catalogue.load(max_per_signature=5)
    matches = cat.scan(b"OSError: [Errno 28] No space left on device\n" * 100, 1)
    assert [m.line for m in matches] == [1, 2, 3, 4, 5]


def test_context_lines_skip_tqdm_noise(catalogue: Catalogue) -> None:
    data = (
        "Traceback (most recent call last):\n"
        '  File "train.py", line 3, in <module>\n'
        f"\r{BAR}\r{BAR}\n"
        "torch.OutOfMemoryError: CUDA out of memory.\n"
        "after one\n"
    ).encode()
    [match] = catalogue.scan(data, 1)
    assert match.context == (
        "Traceback (most recent call last):",
        '  File "train.py", line 3, in <module>',
        "after one",
    )


def test_progress_is_the_last_undescribed_bar(catalogue: Catalogue) -> None:
    data = (
        f"\r{BAR}\r 46%|████▌     | 460/1000 [12:40<15:10,  1.66s/it]\n"
        "Map (num_proc=4):  50%|█████     | 5/10 [00:01<00:01,  3.2it/s]\n"
    ).encode()
    assert catalogue.scan_chunk(data, 1).progress == Progress(step=460, total=1000)


def test_progress_absent(catalogue: Catalogue) -> None:
    assert catalogue.scan_chunk(b"nothing here\n", 1).progress is None


def test_metrics_quoted_numeric_nan_inf(catalogue: Catalogue) -> None:
    data = (
        b"{'loss': 6.177, 'grad_norm': 2.4, 'epoch': 0.01}\n"
        b"{'loss': 'nan', 'grad_norm': 'inf', 'learning_rate': '1.99e-05', 'memory/max_active (GiB)': '12.3', "
        b"'epoch': '0.03125'}\n"
    )
    metrics = catalogue.scan_chunk(data, 1).metrics
    assert metrics is not None
    assert metrics["loss"] != metrics["loss"]  # nan
    assert metrics["grad_norm"] == float("inf")
    assert metrics["epoch"] == 0.03125
    assert metrics["memory/max_active (GiB)"] == 12.3


def test_parse_metrics_old_numeric_style_and_non_metric_dicts() -> None:
    assert parse_metrics("{'loss': 1.5, 'epoch': 2}") == {"loss": 1.5, "epoch": 2.0}
    assert parse_metrics("{'base_model': 'llama', 'seed': 42}") is None


def test_milestones(catalogue: Catalogue) -> None:
    data = (
        b"[INFO] [axolotl.train.execute_training:203] Starting trainer...\n"
        b"[INFO] [axolotl.cli.preprocess] Success! Preprocessed data path: `dataset_prepared_path: ./prep`\n"
        b"[INFO] Training Completed!!! Saving pre-trained model to ./qlora-out\n"
        b"[INFO] [axolotl.train.save_trained_model:350] Model successfully saved to ./outputs/out\n"
    )
    result = catalogue.scan_chunk(data, 1)
    got = [(m.kind, m.line, m.path) for m in result.milestones]
    assert got == [
        (MilestoneKind.TRAINER_STARTED, 1, None),
        (MilestoneKind.PREPROCESSED, 2, "./prep"),
        (MilestoneKind.TRAINING_COMPLETED, 3, "./qlora-out"),
        (MilestoneKind.MODEL_SAVED, 4, "./outputs/out"),
    ]


def _m(sig: str, action: SignatureAction, line: int) -> LogMatch:
    return LogMatch(signature=sig, action=action, line=line, text=sig)


def test_verdict_prefers_root_cause_over_child_failed_error(catalogue: Catalogue) -> None:
    data = (
        b"[rank3]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n"
        b"Traceback (most recent call last):\n"
        b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
    )
    matches = catalogue.scan(data, 1)
    assert {m.signature for m in matches} == {"cuda_oom", "child_failed_error"}
    root = catalogue.verdict(matches)
    assert root is not None and root.signature == "cuda_oom"


def test_verdict_root_cause_even_when_wrapper_comes_first(catalogue: Catalogue) -> None:
    matches = [_m("child_failed_error", A.RESUBMIT, 1), _m("ecc_error", A.RESUBMIT_EXCLUDE_NODE, 9)]
    root = catalogue.verdict(matches)
    assert root is not None and root.signature == "ecc_error"


def test_verdict_falls_back_to_wrapper_alone(catalogue: Catalogue) -> None:
    root = catalogue.verdict([_m("child_failed_error", A.RESUBMIT, 4)])
    assert root is not None and root.signature == "child_failed_error"


def test_completed_then_watchdog_reports_both_verdict_finish(catalogue: Catalogue) -> None:
    data = ("[INFO] Training completed! Saving trained model to ./out.\n" + WATCHDOG + "\n").encode()
    matches = catalogue.scan(data, 1)
    assert [m.signature for m in matches] == ["training_completed", "nccl_watchdog_timeout"]
    root = catalogue.verdict(matches)
    assert root is not None and root.action is A.FINISH


def test_disk_full_before_completion_fails(catalogue: Catalogue) -> None:
    data = b"OSError: [Errno 28] No space left on device\nTraining completed! Saving trained model to x.\n"
    root = catalogue.verdict(catalogue.scan(data, 1))
    assert root is not None and root.signature == "disk_full"


def test_verdict_ignores_ignore_and_hang_hints(catalogue: Catalogue) -> None:
    matches = [_m("noise", A.IGNORE, 1), _m("extension_build_hang", A.RESUBMIT, 2)]
    assert catalogue.verdict(matches) is None
    assert catalogue.verdict([]) is None


def test_hang_cause_only_right_after_the_hint(catalogue: Catalogue) -> None:
    hint = _m("extension_build_hang", A.RESUBMIT, 100)
    assert catalogue.hang_cause([hint], last_line=103) == hint
    assert catalogue.hang_cause([hint], last_line=5000) is None
    assert catalogue.hang_cause([hint, _m("nccl_error", A.RESUBMIT_EXCLUDE_NODE, 101)], last_line=102) is None


def test_engines_agree_on_a_mixed_chunk() -> None:
    lines = [BAR, WATCHDOG, "srun: error: Node failure on node07", "plain", "NVCC Timed Out", "x" * 300]
    data = ("\n".join(lines * 50) + "\n").encode()
    hs = Catalogue.load(engine="hyperscan").scan(data, 7)
    rx = Catalogue.load(engine="regex").scan(data, 7)
    assert hs == rx
    assert len(hs) == 3 * 20  # capped at max_per_signature for each of the three signatures


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        ("Watchdog caught collective operation timeout", "Watchdog caught collective operation timeout"),
        ("nvcc.{0,40}time[ds]?[ _-]?out", "nvcc"),
        ("srun: error: Node failure on (?P<node>[A-Za-z0-9_.-]+)", "srun: error: Node failure on "),
        ("(torch|cuda)\\.OutOfMemoryError", ".OutOfMemoryError"),
        ("abcd?e", "abc"),
        ("a|bcdef", None),
        ("x{2,3}yz", None),
        ("ab+cde", "cde"),
    ],
)
def test_required_literal(pattern: str, literal: str | None) -> None:
    assert required_literal(pattern) == literal


def test_auto_engine_falls_back_without_hyperscan(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "hyperscan", None)  # makes `import hyperscan` raise ImportError
    cat = Catalogue.load()
    assert cat.engine_name == "regex"
    assert [m.signature for m in cat.scan(WATCHDOG.encode() + b"\n", 1)] == ["nccl_watchdog_timeout"]
    with pytest.raises(RuntimeError, match="hyperscan"):
        Catalogue.load(engine="hyperscan")


def test_node_failure_line_without_a_node_takes_the_node_srun_names_after_it(catalogue: Catalogue) -> None:
    # The order seen on the 4-node test cluster when slurmstepd writes first (SchedMD/slurm
    # src/slurmd/slurmstepd/req.c, then src/api/step_launch.c).
    data = (b"node01 up\n"
            b"slurmstepd: error: *** STEP 41.0 ON node01 CANCELLED AT 2026-12-02T10:30:01 DUE TO NODE FAILURE ***\n"
            b"srun: error: Node failure on node02\n")
    root = catalogue.verdict(catalogue.scan(data, 1))
    assert root is not None and root.signature == "slurm_node_failure"
    assert (root.line, root.node) == (2, "node02")
    assert "DUE TO NODE FAILURE" in root.text  # the deciding line stays the first one


def test_a_node_named_by_another_signature_is_not_borrowed(catalogue: Catalogue) -> None:
    matches = [_m("slurm_node_failure", A.RESUBMIT_EXCLUDE_NODE, 2),
               LogMatch(signature="ecc_error", action=A.RESUBMIT_EXCLUDE_NODE, line=3, text="x", node="node03")]
    root = catalogue.verdict(matches)
    assert root is not None and (root.signature, root.node) == ("slurm_node_failure", None)
