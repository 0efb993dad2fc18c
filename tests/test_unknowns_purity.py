"""`facestream unknowns --add-images` on bundled photos: are the clusters pure?

The truth comes from the data pack, not from our output (tests/data/LICENSES.md, the folder layout):
- named photos: `obama*` is Barack Obama, `video/gallery/<Name>/` is that person, `Tom_Cruise_*` Tom Cruise;
- group photos (not collages): the faces of one photo are different people (2008_001009.jpg is a mother
  and her daughter; two_people.jpg two people; 2008_007676.jpg a group).
A cluster is impure when it holds two named people, or two faces of one group photo. At the former default
(gallery.distance_threshold, 0.6) one cluster held the mother, her daughter and two faces of 2008_007676.
Purity is not bought by splitting: Obama's two photos stay one person.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facestream.pipeline.cli.main import main
from facestream.pipeline.cli.unknowns import list_clusters
from facestream.pipeline.config import load_config

from conftest import DATA

NAMED = ["fr_examples/obama-240p.jpg", "fr_examples/obama-480p.jpg", "dlib_faces/Tom_Cruise_avp_2014_4.jpg",
         "video/gallery/Alex_Lacamoire/alex-lacamoire.png", "video/gallery/Lin_Manuel_Miranda/lin-manuel-miranda.png"]
GROUPS = ["fr_examples/two_people.jpg", "dlib_faces/2008_001009.jpg", "dlib_faces/2008_007676.jpg"]


def person(path: str) -> str | None:
    """Who a photo shows, from its folder or file name; None for a group photo."""
    name = Path(path).name
    if path.startswith("video/gallery/"):
        return Path(path).parent.name
    if name.startswith("obama"):
        return "Barack Obama"
    if name.startswith("Tom_Cruise"):
        return "Tom Cruise"
    return None


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built-in defaults (no ./config.yaml) and one model cache for the whole run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FACESTREAM_CACHE", str(model_cache))


def test_clusters_of_the_bundled_photos_are_pure(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "photos.jsonl"
    images = [str(DATA / name) for name in NAMED + GROUPS]
    code = main(["unknowns", str(path), "--add-images", *images, "--gallery", str(tmp_path / "none.db"), "--json"])
    assert code == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # The listing the command printed, with every member (its JSON shows up to three representatives).
    listing = list_clusters(path, float(load_config(None).unknowns.cluster_threshold))
    assert printed[-1]["summary"]["clusters"] == len(listing.clusters)
    assert [c["faces"] for c in printed[:-1]] == [len(c.faces) for c in listing.clusters]

    sources = {str(DATA / name): name for name in NAMED + GROUPS}
    assert {sources[face.source] for face in listing.faces} >= set(NAMED)  # every named face was clustered
    mixed = []
    for cluster in listing.clusters:
        members = [sources[listing.faces[i].source] for i in cluster.faces]
        named = {person(m) for m in members} - {None}
        groups = [m for m in members if person(m) is None]
        if len(named) > 1 or len(groups) != len(set(groups)):
            mixed.append(members)
    assert mixed == []
    obama = {c.number for c in listing.clusters for i in c.faces if person(sources[listing.faces[i].source]) ==
             "Barack Obama"}  # fmt: skip
    assert len(obama) == 1
