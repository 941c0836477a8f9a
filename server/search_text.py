"""How a query becomes search terms, and how a hit explains why it matched."""

from __future__ import annotations

import re

from server.models import Memory
from server.semantic import Fused

MAX_QUERY_TERMS = 32
_WORD = re.compile(r"\w+", re.UNICODE)
# PostgreSQL's english.stop (Snowball): dropped from keyword queries on SQLite too, so both backends
# match the same words; a query made only of such words keeps them.
STOPWORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "did", "do", "does", "doing", "don", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "s", "same", "she", "should", "so", "some", "such", "t", "than", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "you", "your", "yours", "yourself", "yourselves"])


def search_terms(query: str) -> list[str]:
    """The distinct words of a query, in order, as plain text: no operator in it means anything."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.casefold()):
        if word != "_" and len(seen) < MAX_QUERY_TERMS:
            seen.setdefault(word[:64], None)
    content = [w for w in seen if w not in STOPWORDS]
    return content or list(seen)


def keyword_reason(terms: list[str], memory: Memory) -> str:
    haystack = f"{memory.content} {' '.join(memory.tags)}".casefold()
    matched = [t for t in terms if t in haystack]
    if not matched:
        return "keyword match (word forms such as plurals count)"
    return "matched: " + ", ".join(matched[:10])


def semantic_reason(terms: list[str], fused: Fused) -> str:
    parts = []
    if fused.keyword_rank is not None:
        parts.append(keyword_reason(terms, fused.memory))
    if fused.similarity is not None:
        parts.append(f"similar in meaning ({fused.similarity:.2f})")
    if fused.neighbour > 0:
        parts.append(f"written next to a match (+{fused.neighbour:.2f})")
    return "; ".join(parts)
