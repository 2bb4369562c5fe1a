"""Running ``trvae`` in-process and checking its outcome (shared by the CLI tests)."""

import numpy as np
from click.testing import CliRunner

from trvae_cli.cli import main


def invoke(*args):
    """Run ``trvae ARGS`` in-process; stdout and stderr are kept apart (click >= 8.2)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"


def assert_user_error(result, *fragments):
    """Exit code != 0, one 'error:' line on stderr naming ``fragments``, nothing else, no traceback."""
    assert result.exit_code != 0, result.output
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    # a TrvaeError ends in SystemExit; anything else would be a bug with a traceback
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def bar_images(n: int, seed: int = 0):
    """(images, conditions, domains): 16 x 16 grey bars, the 'bold' ones three times as wide as the
    'plain' ones; domain 'a' horizontal, 'b' vertical; ``n`` of each, in that order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, conditions, domains = [], [], []
    for condition, width in (("plain", 1), ("bold", 3)):
        for domain, horizontal in (("a", True), ("b", False)):
            for _ in range(n):
                img = np.zeros((16, 16), np.float32)
                at = rng.integers(3, 10)
                if horizontal:
                    img[at:at + width, 2:14] = 1.0
                else:
                    img[2:14, at:at + width] = 1.0
                images.append(img)
                conditions.append(condition)
                domains.append(domain)
    return np.stack(images), np.array(conditions), np.array(domains)


def write_bar_images(root, n: int):
    """:func:`bar_images` as ROOT/<plain|bold>/<a|b>/<i>.png; returns ROOT."""
    from trvae_cli.data.images import write_png

    images, conditions, domains = bar_images(n)
    for k, (img, condition, domain) in enumerate(zip(images, conditions, domains)):
        write_png(img, root / condition / domain / f"{k % n:02d}.png")
    return root


def dense(x) -> np.ndarray:
    """A prediction's X (CSR where the input is sparse, dense otherwise) as a dense array."""
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
