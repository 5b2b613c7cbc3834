"""`edgecls tune`: a resumable Optuna search over train.py's settings, on one machine or many.

- settings.py: TuneConfig, the command's settings (train.py's, less what the search sets, plus the search's)
- space.py: the search space, parameters named by TrainConfig fields; the default space; --space files
- search.py: the sampler (TPE, seeded per trial) and the pruner (Hyperband or median)
- storage.py: where the study lives (a journal file in the study folder, or PostgreSQL / MySQL), heartbeats,
  the claim lock
- counting.py: which trials count toward `trials` (retries take the place of the trial they retry)
- study.py: create or continue the study, claim trials (exactly N), the worker loop
- trial.py: one trial: sample, check, train in-process with a reporting/pruning callback, tidy its folder
- outputs.py: trials.csv, best.yaml, the best checkpoint, the plots, the progress line
"""
