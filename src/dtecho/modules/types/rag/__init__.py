"""The ``rag`` module type: retrieval-augmented chat over a project's own documents.

Documents (text, Markdown, PDF) are chunked on paragraph and sentence boundaries
(:mod:`.chunking`), embedded by a served embeddings model (:mod:`.embedding`), stored in the
server's store scoped by project and module (:mod:`.storage`) and retrieved exactly from an
in-memory index mixing cosine similarity with BM25 (:mod:`.index`, :mod:`.lexical`). Chat
requests are answered by a served chat model with the best chunks as numbered context and a
``citations`` list (:mod:`.grounding`). Routes: :mod:`.app`; the type: :mod:`.module`.
"""

from dtecho.modules.types.rag.config import RagConfig
from dtecho.modules.types.rag.module import RagModule

__all__ = ["RagConfig", "RagModule"]
