"""The engine's public API: a run driven from outside, heard through callbacks and stopped by one; the
run folder its recorder writes; resume through the API; and the layering rules of the package."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest
from conftest import copy_digits

from edgecls.engine.callbacks import Callback
from edgecls.engine.config import TrainConfig
from edgecls.engine.trainer import fit, resume
from edgecls.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "edgecls"


@pytest.fixture(scope="module")
def small_data(digits_dir, tmp_path_factory) -> Path:
    return copy_digits(digits_dir, tmp_path_factory.mktemp("engine") / "data")


def config(data: Path, run: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), backbone="FP_classifier", input_size=(32, 32), epochs=6, batch_size=16, workers=0,
                hflip=0.0, optimizer="ADAMW", lr=3e-3, snapshot_path=str(run), model_def_path=None, seed=0)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


class StopAfter(Callback):
    """Records every hook call; asks the run to stop once `epochs` epochs are done."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.calls: list[tuple] = []

    def on_train_start(self, run):
        self.calls.append(("start", run.start_epoch))

    def on_epoch_end(self, run, metrics):
        self.calls.append(("epoch", metrics["epoch"], round(metrics["val_top1"], 6)))
        if metrics["epoch"] >= self.epochs:
            run.stop(f"stopped by the test after epoch {metrics['epoch']}")

    def on_train_end(self, run, result):
        self.calls.append(("end", result.epochs_run))


def summary(run: Path) -> list[dict]:
    with (run / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_callback_stops_the_run_after_epoch_2_and_the_recorder_wrote_the_folder(small_data, tmp_path):
    stopper = StopAfter(2)
    run_dir = tmp_path / "run"
    result = fit(config(small_data, run_dir), callbacks=[stopper])
    assert result.epochs_run == 2 and result.stop_reason == "stopped by the test after epoch 2"
    assert not result.stopped_early  # not early stopping: the callback ended it
    rows = summary(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [c[0] for c in stopper.calls] == ["start", "epoch", "epoch", "end"]
    assert [c[2] for c in stopper.calls[1:3]] == [round(float(r["val_top1"]), 6) for r in rows]
    for name in ("best.pth", "last.pth", "summary.csv", "curves.png", "args.yaml", "class_id.json", "timings.json"):
        assert (run_dir / name).stat().st_size > 0, name
    from edgecls.engine.checkpoint import load_checkpoint

    last = load_checkpoint(run_dir / "last.pth")
    assert last["train"]["epoch"] == 1 and last["task"] == "classify"
    assert Path(last["data"]["val"]) == (small_data / "val").resolve()
    assert result.best_epoch in (1, 2) and result.best_top1 == max(float(r["val_top1"]) for r in rows)

    # the stopped run resumes through the API, with a new epoch budget
    hooks = StopAfter(99)
    again = resume(run_dir, {"epochs": 3}, callbacks=[hooks])
    assert again.epochs_run == 1 and hooks.calls[0] == ("start", 2)
    assert [int(r["epoch"]) for r in summary(run_dir)] == [1, 2, 3]


def test_resume_through_the_api_refuses_a_changed_setting(small_data, tmp_path):
    run_dir = tmp_path / "run"
    fit(config(small_data, run_dir, epochs=1))
    with pytest.raises(UserError, match="`lr` 0.1 differs from the run's 0.003"):
        resume(run_dir, {"epochs": 2, "lr": 0.1})


def test_settings_are_checked_by_the_library_with_field_names(small_data, tmp_path):
    with pytest.raises(UserError, match=r"^`epochs` 0: must be at least 1$"):
        fit(config(small_data, tmp_path / "a", epochs=0))
    with pytest.raises(UserError, match="`crop_scale` 1.5: must be greater than 0 and at most 1"):
        fit(config(small_data, tmp_path / "b", crop_scale=1.5))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- layering


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import statement in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_cli_modules_import_no_other_cli_module_but_the_shared_helper():
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name in ("main.py", "common.py", "__init__.py"):
            continue  # main.py dispatches to every command
        for module, names in imports_of(path):
            if module.startswith("edgecls.cli"):
                assert module == "edgecls.cli.common", f"{path.name} imports {module}"
            if module == "edgecls.cli" and names:
                assert names == ["common"], f"{path.name} imports {names} from edgecls.cli"


def test_engine_imports_nothing_private_from_data():
    for path in sorted((PACKAGE / "engine").glob("*.py")):
        for module, names in imports_of(path):
            if module.startswith("edgecls.data"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"engine/{path.name} imports {private} from {module}"
                assert "cache" not in module.split(".")[2:3] or module == "edgecls.data.cache.policy", (
                    f"engine/{path.name} reaches into {module}; use edgecls.data.loaders"
                )


def test_library_modules_import_no_argparse_privates():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        assert "._actions" not in text and "_option_string_actions" not in text, path


def test_library_modules_import_no_cli_module():
    """cli/ sits on top: nothing below it imports it (entry points may: __main__.py, `if __name__ == ...`)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts[:1] or path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        main_blocks = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
        for block in main_blocks:
            tree.body.remove(block)
        for node in ast.walk(tree):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            modules += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(m.startswith("edgecls.cli") for m in modules), f"{path.relative_to(PACKAGE)} imports cli"


def test_every_command_prints_field_names_as_its_flags():
    """Each cli module's cli() hands run_cli the field -> flag table of its settings schema."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name in ("main.py", "common.py", "__init__.py"):
            continue
        tree = ast.parse(path.read_text())
        cli = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "cli")
        calls = [n for n in ast.walk(cli) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_cli"]
        assert calls and any(k.arg == "flags" for k in calls[0].keywords), f"{path.name}: run_cli without flags"


MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("package", ["engine", "export"])
def test_every_function_reads_at_once(package):
    """No function in engine/ or export/ is longer than a screen (issue 13)."""
    long = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno} lines)")
    assert not long, long
