"""Each request's texts tokenised once: the rows the model runs on, their count, their cuts.

The usage count (``usage.prompt_tokens``), the truncation report (``truncated``,
``X-LaME-Truncated``) and the model's input all come from the same token rows, built here on
the request's thread; the model thread feeds them to ``Embedder.encode_tokens`` as they are.
A row is what ``TextProcessor.encode_rows`` builds: [BOS], the image's visual tokens, the text's
first ``max_text_tokens`` tokens. An artifact with a prompt template lays its rows out its own
way: those rows come from ``encode_rows`` itself, and their truncation check tokenises a
bounded head of the text a second time.
"""

from __future__ import annotations

from typing import Any, Sequence


def token_rows(
    text: Any, formatted: Sequence[str | None], has_image: Sequence[bool], image_tokens: int
) -> tuple[list[list[int]], list[int]]:
    """-> (the token row of each input row, the indices of the texts cut to the limit).

    ``text``: the artifact's ``TextProcessor``; ``formatted``: texts with their instructions
    (``format_query``)."""
    limit = text.max_text_tokens
    rows: list[list[int]] = []
    truncated: list[int] = []
    for i, (body, image) in enumerate(zip(formatted, has_image)):
        if text.template is not None:
            ids, mask = text.encode_rows([body], [image], image_tokens)
            rows.append([int(t) for t, m in zip(ids[0], mask[0]) if m])
            cut = bool(body) and _cut(text.encode_limited(body, limit)[1], limit)
        else:
            tokens: list[int] = []
            cut = False
            if body:
                tokens, total = text.encode_limited(body, limit)
                cut = _cut(total, limit)
            visual = [text.special["image"]] * image_tokens if image else []
            rows.append([text.special["bos"], *visual, *tokens])
        if cut:
            truncated.append(i)
    return rows, truncated


def _cut(total: int | None, limit: int) -> bool:
    """``encode_limited``'s count: None means the text was cut before tokenising."""
    return total is None or total > limit
