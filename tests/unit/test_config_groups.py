"""``config.groups.load_group`` reads a group's files once per state of the files, and hands out copies."""

from __future__ import annotations

import os

import pytest

from autoquant_sweep.config.groups import load_group
from autoquant_sweep.paths import conf_dir


def test_a_group_is_read_again_when_a_file_changes_and_callers_get_their_own_copy(tmp_path) -> None:
    group = tmp_path / "quant_pair"
    group.mkdir()
    source = (conf_dir() / "quant_pair" / "wint8_aint8.yaml").read_text()
    (group / "wint8_aint8.yaml").write_text(source)
    first = load_group("quant_pair", tmp_path)
    assert [item["name"] for item in first] == ["wint8_aint8"]
    first[0]["name"] = "changed by a caller"
    assert load_group("quant_pair", tmp_path)[0]["name"] == "wint8_aint8"  # a copy: the read is intact

    (group / "extra.yaml").write_text(source.replace("name: wint8_aint8", "name: extra"))
    assert sorted(item["name"] for item in load_group("quant_pair", tmp_path)) == ["extra", "wint8_aint8"]
    stat = (group / "extra.yaml").stat()
    (group / "extra.yaml").write_text("name: [not, a, name\n")  # same size or not: the mtime moves
    os.utime(group / "extra.yaml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(Exception, match=r"extra\.yaml"):
        load_group("quant_pair", tmp_path)
