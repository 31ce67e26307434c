"""The data benchmarks' command lines: --help / -h list the options; a typo is one line with a suggestion."""
import importlib

import pytest


@pytest.mark.parametrize("script, options", [("bench_tokenize", ["--repeats (int, default 3)"]),
                                             ("bench_data", ["--repeats (int, default 3)",
                                                             "--measure_step (bool, default False)"])])
def test_help_and_typos(script, options, capsys):
    bench = importlib.import_module(f"bench.{script}")
    assert bench.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(bench.__doc__.splitlines()[0]) and all(o in text for o in options)
    assert bench.main(["-h"]) == 0 and capsys.readouterr().out == text
    assert bench.main(["--repeat=2"]) == 2
    assert capsys.readouterr().err == "error: unknown option --repeat. Did you mean: --repeats?\n"
    assert bench.main(["--repeats=0"]) == 2 and "--repeats=0 is invalid" in capsys.readouterr().err
