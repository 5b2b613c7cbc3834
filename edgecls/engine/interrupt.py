"""Ctrl-C during training: stop between steps, keep last.pth at the last complete epoch, say how to resume.

    stopper = StopOnCtrlC()
    with stopper:
        fit(cfg, callbacks=[stopper])      # a first Ctrl-C: TrainingInterrupted after the current step

Once training has started, the first SIGINT asks the run to stop: the epoch ends after the step in progress and
is not recorded (last.pth, written whole at each epoch's end, keeps the last complete epoch), then `fit` raises
TrainingInterrupted. A second SIGINT ends it at once (`quit`, or the exception raised in the handler). Before
training starts (scan, cache fill) and once its last epoch is recorded, a SIGINT is Python's KeyboardInterrupt,
as without the handler. train.py installs it; `fit` alone does not (tune and library callers keep the plain
KeyboardInterrupt), nor does a torchrun rank (ranks must stop at the same step). A terminal's Ctrl-C reaches
the DataLoader workers too; forked from the main process, they inherit the handler, which ignores it there: the
main process decides when the step ends and shuts them down. A process started with SIGINT ignored (a script's
background job, nohup) keeps it ignored, as Python itself does.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from edgecls.engine.callbacks import Callback


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C: its folder, how many epochs its last.pth holds (0: none was written), and its
    dataset (train.py's resume command names it)."""

    def __init__(self, run_dir: Path, epochs_done: int, epochs: int, data: str | None = None):
        super().__init__(f"interrupted: {run_dir} holds {epochs_done} of {epochs} epochs")
        self.run_dir, self.epochs_done, self.epochs, self.data = Path(run_dir), epochs_done, epochs, data


def interrupted(run) -> TrainingInterrupted:
    return TrainingInterrupted(run.recorder.run_dir, run.saved_epochs, run.cfg.epochs, run.cfg.data)


class StopOnCtrlC(Callback):
    """The SIGINT handler (a context manager) and the callback that hands it the run."""

    def __init__(self, notice=None, quit=None):
        """notice(text): says a first Ctrl-C was heard (default: a line on stderr). quit(stop): called with the
        TrainingInterrupted on a second Ctrl-C, from the signal handler; it should end the process (os._exit),
        since an exception raised there may land in C code that swallows it. None: raise it."""
        self.run = None
        self.previous = None
        self.pid = None  # the process that installed the handler (a forked child inherits it)
        self.notice = notice or (lambda text: print(text, file=sys.stderr, flush=True))
        self.quit = quit

    def __enter__(self):
        main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
        if main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self.pid = os.getpid()
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def on_train_start(self, run) -> None:
        self.run = None if run.ctx.enabled else run

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:
            return  # a forked DataLoader worker: it serves the step in progress until the main process stops it
        run = self.run
        if run is None or run.stop_reason is not None or run.start_epoch + run.epochs_run >= run.cfg.epochs:
            # not training yet (scan, cache fill), or done (the final table): KeyboardInterrupt, as usual
            signal.default_int_handler(signum, frame)
        if run.interrupted:
            self.__exit__()
            if self.quit is None:
                raise interrupted(run)
            self.quit(interrupted(run))
        run.interrupt()
        self.notice("\ninterrupted: stopping after this step (Ctrl-C again to quit now)")
