"""trvae: trVAE (Lotfollahi et al., Bioinformatics 2020) as a command-line tool.

The package is importable without TensorFlow: the model lives in
:mod:`trvae_cli.model` and is imported only by the functions that need it.

Examples
--------
>>> from trvae_cli import api                       # doctest: +SKIP
>>> model_dir = api.train("data.h5ad", condition_key="condition")  # doctest: +SKIP
>>> pred = api.transform(model_dir, "data.h5ad", source="control", target="stimulated")  # doctest: +SKIP
"""

__version__ = "0.1.0"
