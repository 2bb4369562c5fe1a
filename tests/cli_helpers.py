"""Running ``trvae`` in-process and checking its outcome (shared by the CLI tests)."""

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
