"""Input data: the embedded sample images and (later) the training pipelines."""
