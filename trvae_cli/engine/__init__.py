"""The training engine: build, compile, callbacks, fit, checkpoints, resume, signals, strategies and
progress. It knows no input kind: a source hands it a :class:`~trvae_cli.engine.fit.TrainingData`."""
