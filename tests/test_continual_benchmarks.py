"""The continual and cross-domain benchmarks run end to end (--smoke: 32 px, 64 scenes) and resume from their cache."""
import json

from benchmarks import continual, cross_domain


def test_continual_benchmark_writes_the_paired_table_and_resumes(tmp_path, capsys):
    argv = ["--smoke", "--seeds", "0", "--tasks", "6-4", "--methods", "finetune,plop", "--max-iters", "4",
            "--step-iters", "2", "--cache", str(tmp_path / "c.json"), "--out", str(tmp_path / "o.json")]
    continual.main(argv)
    out = json.loads((tmp_path / "o.json").read_text())["summary"]["6-4"]
    assert out["methods"]["plop"]["n"] == 1 and out["paired"]["plop - finetune"]["miou_old"]["n"] == 1
    assert "| plop - finetune |" in capsys.readouterr().out
    continual.main(argv)  # every run is cached: nothing trains again
    assert "step 0" not in capsys.readouterr().out


def test_cross_domain_benchmark_reports_each_domain_and_the_paired_gain(tmp_path, capsys):
    argv = ["--smoke", "--seeds", "0", "--max-iters", "2", "--cache", str(tmp_path / "c.json"),
            "--out", str(tmp_path / "o.json")]
    cross_domain.main(argv)
    summary = json.loads((tmp_path / "o.json").read_text())["summary"]
    assert summary["methods"]["ce+rl"]["n"] == 1 and summary["paired"]["digits_night"]["n"] == 1
    assert "CE + RL - CE (paired)" in capsys.readouterr().out
