"""Paths of a search's settings."""

from __future__ import annotations

import pytest

from ckd_search.search.settings import join_storage


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("/nfs/runs/", "/nfs/runs/study-1"),
        ("s3://bucket", "s3://bucket/study-1"),
        ("s3://bucket/runs/", "s3://bucket/runs/study-1"),
        # MinIO: the query names the endpoint; the study goes into the path, before it
        (
            "s3://bucket/runs?endpoint_override=minio:9000&scheme=http",
            "s3://bucket/runs/study-1?endpoint_override=minio:9000&scheme=http",
        ),
    ],
)
def test_the_study_folder_joins_the_storage_path(storage, expected):
    assert join_storage(storage, "study-1") == expected


def test_pyarrow_reads_the_joined_uri_as_the_study_folder():
    from pyarrow import fs

    uri = join_storage("s3://bucket/runs?endpoint_override=127.0.0.1:9&scheme=http", "study-1")
    filesystem, path = fs.FileSystem.from_uri(uri)
    assert path == "bucket/runs/study-1" and filesystem.type_name == "s3"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/w/run/ray", "/w/moved/ray"),
        ("/w/run", "/w/moved"),
        ("sqlite:////w/run/mlflow.db", "sqlite:////w/moved/mlflow.db"),
        ("/w/run-ray", "/w/run-ray"),  # a sibling folder, not inside the run
        ("s3://bucket/x", "s3://bucket/x"),
    ],
)
def test_a_moved_run_rebases_only_paths_inside_it(value, expected):
    from ckd_search.search.settings import _rebase

    assert _rebase(value, "/w/run", "/w/moved") == expected
