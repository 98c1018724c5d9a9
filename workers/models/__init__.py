"""Model executors' process side: a model host per slot (`host`), the models it keeps
loaded (`residency`) and the libraries it drives (`textgen`: transformers generate).

These modules import torch and the model libraries only when a model is loaded, in the
host process; the worker itself never imports them (it must never initialise CUDA)."""
