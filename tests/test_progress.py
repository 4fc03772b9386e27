import sagsae_cli.progress as progress


def test_non_terminal_output_gets_periodic_log_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    with progress.progress_bar("harvest demo", total=300) as bar:
        for _ in range(3):
            bar.advance(100)
            bar.note("L0 3.2")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "harvest demo" in ln]
    assert len(lines) == 4  # three log lines and the final render
    assert "100/300" in lines[0] and "300/300" in lines[-1] and "tok/s" in lines[-1]


def test_quiet_prints_nothing(capsys):
    with progress.progress_bar("quiet demo", total=10, quiet=True) as bar:
        bar.advance(10)
    assert "quiet demo" not in capsys.readouterr().err
