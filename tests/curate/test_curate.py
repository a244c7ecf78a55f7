"""``bigseer curate``: deterministic for a seed, cluster dropping, its list feeds ``bigseer pretrain``, the
one-command pipeline with its reports and PNGs, tar members become shards, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bigseer.cli import main
from bigseer.curate.embed import EmbedConfig, embed_source
from bigseer.data import open_source
from tests.curate.helpers import write_folder, write_weights
from tests.data.zoo import write_tar


@pytest.fixture(scope="module")
def pile(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("curate")
    write_folder(root / "imgs", 48)
    weights = Path(write_weights(root / "tiny.safetensors"))
    embed_source(EmbedConfig(str(root / "imgs"), str(weights), str(root / "emb"), part_size=16, resize=32, crop=32))
    return {"root": root, "imgs": root / "imgs", "weights": weights, "emb": root / "emb"}


def _curate(pile: dict[str, Path], out: str, *extra: str) -> list[str]:
    assert main(["curate", str(pile["emb"]), "--out", str(pile["root"] / out), "--levels", "8,3", "--target", "20",
                 *extra]) == 0
    return (pile["root"] / out / "list.txt").read_text().splitlines()


def test_curate_is_deterministic_for_a_seed_and_drops_clusters(pile):
    a, b, c = _curate(pile, "a"), _curate(pile, "b"), _curate(pile, "c", "--seed", "1")
    assert a == b and len(a) == 20 and len(set(a)) == 20 and a != c
    assert all(Path(p).is_file() for p in a)
    clusters = np.load(pile["root"] / "a" / "clusters.npz")
    report = json.loads((pile["root"] / "a" / "report.json").read_text())
    big = report["examples"][0]["cluster"]
    dropped = _curate(pile, "d", "--drop_clusters", str(big))
    paths = {i: open_source(str(pile["imgs"])).parts[0].paths[i] for i in clusters["ids"]}
    in_big = {paths[i] for i, lab in zip(clusters["ids"], clusters["level1"]) if lab == big}
    assert not set(dropped) & in_big and len(dropped) == 20
    for name in ("cluster_sizes.png", "clusters.png", "report.md", "selected.npy"):
        assert (pile["root"] / "a" / name).stat().st_size > 0


def test_curated_list_feeds_pretrain(pile, tmp_path):
    listed = _curate(pile, "forpretrain")
    run = ["pretrain", "--data", str(pile["root"] / "forpretrain" / "list.txt"), "--max_steps", "1", "--no_export",
           "--batch_size", "4", "--recipe", "none", "--crops", "2x32+2x16", "--output_dir", str(tmp_path / "run")]
    assert main(run) == 0
    assert len(open_source(str(pile["root"] / "forpretrain" / "list.txt"))) == len(listed)


def test_one_command_pipeline_on_a_raw_pile_and_on_tar_shards(pile, tmp_path, capsys):
    src = pile["imgs"]
    assert main(["curate", str(src), "--weights", str(pile["weights"]), "--out", str(tmp_path / "all"),
                 "--resize", "32", "--crop", "32", "--part_size", "16", "--target", "10", "--levels", "6,2"]) == 0
    assert "pretrain with: bigseer pretrain --data" in capsys.readouterr().out
    for name in ("embeddings/report.md", "embeddings/embed.png", "dedup/report.md", "dedup/groups.png",
                 "dedup/keep.npy", "report.md", "cluster_sizes.png", "clusters.png", "list.txt"):
        assert (tmp_path / "all" / name).is_file(), name
    assert len((tmp_path / "all" / "list.txt").read_text().splitlines()) == 10
    files = sorted(src.iterdir())[:12]
    write_tar(str(tmp_path / "s-000000.tar"), {f"{k:04d}.png": f.read_bytes() for k, f in enumerate(files)})
    assert main(["curate", str(tmp_path / "s-000000.tar"), "--weights", str(pile["weights"]), "--out",
                 str(tmp_path / "tar"), "--resize", "32", "--crop", "32", "--target", "5", "--levels", "3"]) == 0
    index = tmp_path / "tar" / "shards" / "index.json"
    catalog = open_source(str(index))
    assert len(catalog) == 5
    picked = np.load(tmp_path / "tar" / "selected.npy")
    originals = {k: f.read_bytes() for k, f in enumerate(files)}
    assert [catalog.parts[0].read(j) for j in range(5)] == [originals[int(i)] for i in picked]


def test_curate_refusals_are_one_line(pile, tmp_path, capsys):
    cases = [(["curate", str(tmp_path / "none"), "--out", str(tmp_path / "o")], "not an embeddings directory"),
             (["curate", str(pile["emb"]), "--out", str(tmp_path / "o"), "--drop_clusters", "99", "--levels", "4"],
              "not level-1 clusters"),
             (["curate", str(pile["emb"]), "--out", str(tmp_path / "o"), "--levels", "8,9"], "decreasing"),
             (["curate", str(pile["emb"]), "--out", str(tmp_path / "o"), "--keep", str(tmp_path)],
              "not a dedup output"),
             (["curate", str(pile["emb"]), "--out", str(tmp_path / "o"), "--kmeans", "torch", "--fraction", "0"],
              "--fraction 0.0 must be in (0, 1]")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
