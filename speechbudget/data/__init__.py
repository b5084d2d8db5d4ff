"""Data preparation: sources -> lhotse manifests -> fbank features; k-means targets; datasets."""
