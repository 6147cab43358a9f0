"""The request log: a JSON line per request, prompt text only when asked, rotated."""

from __future__ import annotations

import json
from pathlib import Path

from adapter_registry.serving.request_log import RequestLog


def test_prompt_text_is_written_only_with_log_prompts_and_the_file_rotates(tmp_path: Path) -> None:
    quiet = RequestLog(tmp_path / "quiet.jsonl")
    quiet.write({"request_id": "a", "status": 200}, {"input": "my secret order", "text": "refund | ok"})
    quiet.close()
    assert json.loads((tmp_path / "quiet.jsonl").read_text()) == {"request_id": "a", "status": 200}

    loud = RequestLog(tmp_path / "loud.jsonl", log_prompts=True, max_bytes=300, backups=2)
    for i in range(20):
        loud.write({"request_id": str(i), "status": 200}, {"input": "x" * 40})
    loud.close()
    files = sorted(p.name for p in tmp_path.glob("loud.jsonl*"))
    assert files == ["loud.jsonl", "loud.jsonl.1", "loud.jsonl.2"]  # rotated, two backups kept
    last = [json.loads(line) for line in (tmp_path / "loud.jsonl").read_text().splitlines()][-1]
    assert last == {"request_id": "19", "status": 200, "input": "x" * 40}
    RequestLog(None).write({"request_id": "b"})  # no path: nothing written, nothing raised
