"""The parts of `plumelink.models.train.train_transfer`: the configuration (`config`), the
data (`data.TrainingData`) and the stages (`stages`), which `join` and `tune` reuse."""
