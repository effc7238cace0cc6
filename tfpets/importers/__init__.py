"""Readers of other frameworks' checkpoint files that need neither the framework nor trust in the file.

* `safe_unpickle`: the restricted unpickler (only allow-listed globals resolve, to inert stand-ins).
* `torch_file`: `torch.save` files (zip and legacy formats) read into NumPy arrays without torch.
"""
