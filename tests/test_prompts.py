from collections import Counter

import pytest

from dgpo.data.prompts import epoch_prompts, load_prompts


def test_epoch_prompts_deterministic_and_balanced():
    train = load_prompts("toy:train")
    share = Counter(m["tag"] for m in train)
    assert share["position"] / len(train) > 0.7  # why balancing matters
    a = epoch_prompts(train, 8, seed=0, epoch=3, balance=True)
    assert a == epoch_prompts(train, 8, seed=0, epoch=3, balance=True)
    assert a != epoch_prompts(train, 8, seed=0, epoch=4, balance=True)
    tags = Counter(m["tag"] for e in range(30) for m in epoch_prompts(train, 8, 0, e, balance=True))
    assert set(tags) == {"counting", "position", "color_attr"} and max(tags.values()) - min(tags.values()) <= 1
    plain = epoch_prompts(train, 8, 0, 0)
    assert len({m["prompt"] for m in plain}) == 8


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\na dog\n")
    assert [m["prompt"] for m in load_prompts(str(txt))] == ["a cat", "a dog"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompts(str(tmp_path / "none.txt"))
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(str(tmp_path / "e.txt"))


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.jsonl"])
def test_non_utf8_prompt_file_error_names_the_file(tmp_path, name):
    bad = tmp_path / name
    bad.write_bytes(b'{"prompt": "a red \xff circle", "include": []}\n')
    with pytest.raises(ValueError, match=rf"{name}: not UTF-8 text \(byte 0xff at offset 18\)"):
        load_prompts(str(bad))
    bad.write_text('{"prompt": "a café circle", "include": []}\n', encoding="utf-8")
    assert "café" in load_prompts(str(bad))[0]["prompt"]


def test_the_shipped_evaluation_sets_load_by_name():
    from dgpo.errors import InputError, MissingPathError

    assert [len(load_prompts(f"{n}:test")) for n in ("ocr", "pickscore", "drawbench")] == [1018, 2048, 1000]
    assert load_prompts("pickscore:test")[0]["prompt"]
    with pytest.raises(InputError, match="dataset/ocr/train.txt"):
        load_prompts("ocr:train")
    with pytest.raises(MissingPathError, match="pickscore:test"):
        load_prompts("no/such/prompts.txt")
