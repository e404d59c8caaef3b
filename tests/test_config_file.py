"""Experiment files: TOML in, flags out; the command line wins; mistakes name the key."""

import pytest

from fedstream.cli.config_file import ConfigError, write_resolved
from fedstream.cli.main import main, parse


def write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return str(path)


def test_file_sets_flags_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, """
[data]
clients = 10
partitioner = "iid"
[federation]
rounds = 7
server-lr = 0.01
dropout = true
""")
    args = parse(["run", "--config", path, "--rounds", "3"])
    assert (args.clients, args.partitioner, args.server_lr, args.dropout) == (10, "iid", 0.01, True)
    assert args.rounds == 3


@pytest.mark.parametrize("text, message", [
    ("roundz = 3", "unknown key 'roundz' for `fedstream run`; known keys: aggregator, "),
    ('partitioner = "pathological"', "'partitioner' = 'pathological' is not allowed; choose one of "
                                  "reference, iid, shards, dirichlet"),
    ('rounds = "many"', "'rounds' must be of type int"),
    ("dropout = 1", "'dropout' must be true or false"),
    ("[a]\nrounds = 1\n[b]\nrounds = 2", "'b.rounds' is given twice"),
    ("rounds = [", "not valid TOML"),
])
def test_mistakes_name_the_key_and_what_is_allowed(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        parse(["run", "--config", write(tmp_path, text)])
    assert message in str(e.value)


def test_main_reports_a_bad_file_in_one_line(tmp_path, capsys):
    assert main(["simulate", "--config", write(tmp_path, "colour = 'red'")]) == 2
    assert "unknown key 'colour' for `fedstream simulate`" in capsys.readouterr().err


def test_resolved_config_repeats_the_run(tmp_path):
    args = parse(["simulate", "--rounds", "5", "--normalize", "--partitioner", "iid",
                  "--server-lr", "0.003", "--data-seed", "7"])
    saved = tmp_path / "config.toml"
    write_resolved(saved, args, args.parser)
    again = parse(["simulate", "--config", str(saved)])
    for key in ("rounds", "normalize", "partitioner", "server_lr", "clients", "model_seed",
                "batch_size", "units", "data_seed"):
        assert getattr(again, key) == getattr(args, key), key
