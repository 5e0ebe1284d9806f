"""A local storage path some Ray node cannot see is refused before the search starts."""

from __future__ import annotations

import pytest

from ckd_search.errors import UserError
from ckd_search.search import shared_storage


@pytest.fixture
def one_node_ray(ray_cleanup):
    import ray

    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    return ray.nodes()[0]["NodeManagerAddress"]


def test_each_node_is_asked_whether_the_path_exists(tmp_path, one_node_ray):
    assert shared_storage.nodes_missing(str(tmp_path)) == []
    assert shared_storage.nodes_missing(str(tmp_path / "absent")) == [one_node_ray]


def test_a_node_that_cannot_see_the_storage_refuses_the_search(tmp_path, monkeypatch):
    asked = []

    def missing_on_one(path: str) -> list[str]:
        asked.append(path)
        assert (tmp_path / "store").joinpath(path.rpartition("/")[2]).is_file()  # the marker is there
        return ["10.0.0.7"]

    monkeypatch.setattr(shared_storage, "alive_nodes", lambda: [{}, {}])
    monkeypatch.setattr(shared_storage, "nodes_missing", missing_on_one)
    with pytest.raises(UserError, match=r"storage .*store is not visible from Ray node\(s\) 10.0.0.7"):
        shared_storage.check_storage_shared(str(tmp_path / "store"))
    assert len(asked) == 1 and list((tmp_path / "store").iterdir()) == []  # the marker is removed


def test_uris_and_single_nodes_are_not_probed(tmp_path, monkeypatch):
    def fail(path: str) -> list[str]:
        raise AssertionError("probed")

    monkeypatch.setattr(shared_storage, "nodes_missing", fail)
    monkeypatch.setattr(shared_storage, "alive_nodes", lambda: [{}])
    shared_storage.check_storage_shared(str(tmp_path))
    monkeypatch.setattr(shared_storage, "alive_nodes", lambda: [{}, {}])
    shared_storage.check_storage_shared("s3://bucket/runs")
    assert list(tmp_path.iterdir()) == []
