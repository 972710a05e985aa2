"""Tokens for BM25: Latin words and numbers, CJK character unigrams and bigrams.

``bm25_tokens("Vector databases: 向量数据库")`` gives
``["vector", "database", "向", "量", "数", "据", "库", "向量", "量数", "数据", "据库"]``;
"v2.4.1" stays one token.
No dictionary (jieba and the like) is needed: a query's bigrams match inside longer
words, so "数据库" finds "向量数据库". English stop words and a few Chinese particles
(as unigrams only) are dropped; an English plural ``s`` is folded. Runs on every chunk
and every query, so it is one regular expression and a loop.
"""

from __future__ import annotations

import re

__all__ = ["bm25_tokens"]

# CJK ideographs (with extension A and compatibility forms) and Japanese kana: scripts
# written without spaces. Hangul is written with spaces and is tokenized as words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A word may carry dotted numbers, so that versions and decimals stay one token
# ("2.4.1", "v3.14"): "2.4.1" and "2.1.4" must not look alike.
_TOKEN = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>[^\W_{_CJK}]+(?:\.\d+)*)")

_STOP_WORDS = """a about above after again against all am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    few for from further had has have having he her here hers herself him himself his how
    i if in into is it its itself just me more most my myself no nor not now of off on
    once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves s t d ll m re ve"""
_STOP = frozenset(_STOP_WORDS.split())
# Particles so frequent that as unigrams they only cost time (their bigrams are kept).
_CJK_STOP = frozenset("的了是在和与及或之也就都而着吗呢吧啊")


def _fold(word: str) -> str:
    """A light stemmer: fold English plurals ("databases" -> "database")."""
    if len(word) <= 3 or not word.isascii() or not word.endswith("s"):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ss", "us", "is")):
        return word
    return word[:-1]


def bm25_tokens(text: str) -> list[str]:
    """Lowercased BM25 tokens of ``text`` (see the module docstring); may be empty."""
    out: list[str] = []
    append = out.append
    for m in _TOKEN.finditer(text.lower()):
        run = m.group("cjk")
        if run is None:
            word = m.group("word")
            if word not in _STOP:
                append(_fold(word))
            continue
        for ch in run:
            if ch not in _CJK_STOP:
                append(ch)
        out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out
