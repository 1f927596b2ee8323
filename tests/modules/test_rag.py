"""The ``rag`` module type through its HTTP routes, on real engines and a real store.

Each instance is driven as the front door drives it: an ASGI app called with
``scope["path"]`` the rest of the URL and ``scope["root_path"]`` = ``/{project}/{module}``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError

from dtecho.config import Settings
from dtecho.engines.registry import ModelRegistry
from dtecho.modules.base import ModuleContext, ModuleServices
from dtecho.modules.types.rag import RagModule
from dtecho.modules.types.rag.chunking import chunk_text
from dtecho.store import Store

# One event loop for the file's async tests: the engines (a reservoir LM, text features)
# start once.
on_module_loop = pytest.mark.asyncio(loop_scope="module")

CORPUS = {
    "Volcanoes": (
        "Volcanoes form where molten rock from the mantle reaches the surface. The style of an "
        "eruption depends mostly on the magma's viscosity and the amount of dissolved gas.\n\n"
        "Basaltic magma is hot and runny, so gas escapes easily and lava pours out in gentle "
        "flows, as in Hawaii. Andesitic and rhyolitic magmas are thick and sticky; they trap "
        "gas until the pressure shatters the rock, producing violent explosions and ash "
        "columns.\n\n"
        "Volcanologists watch for swarms of small earthquakes, ground swelling measured by GPS "
        "and rising sulphur dioxide emissions, which often precede an eruption by days."
    ),
    "Sourdough": (
        "Sourdough bread is leavened by a starter: a culture of wild yeasts and lactic acid "
        "bacteria kept alive in flour and water. Feed the starter daily.\n\n"
        "Mix flour, water, salt and active starter. Leave the dough to ferment in bulk for four "
        "to six hours at room temperature, folding it every half hour at first.\n\n"
        "Shape the loaf, let it proof overnight in the refrigerator, and bake it in a preheated "
        "Dutch oven at 250 °C until the crust is deep brown."
    ),
    "TCP": (
        "TCP opens a connection with a three-way handshake. The client sends a SYN segment with "
        "its initial sequence number, the server replies with SYN-ACK, and the client "
        "acknowledges with ACK.\n\n"
        "Reliability comes from sequence numbers, acknowledgements and retransmission timers: "
        "a segment that is not acknowledged in time is sent again.\n\n"
        "Congestion control algorithms such as Reno and CUBIC shrink the congestion window when "
        "packets are lost and grow it slowly again."
    ),
    "Honey bees": (
        "Honey bee foragers tell their nest mates where to find food with the waggle dance. A "
        "dancer runs straight ahead while shaking her abdomen, then circles back.\n\n"
        "The angle of the straight run relative to vertical on the comb gives the direction of "
        "the flowers relative to the sun.\n\n"
        "Karl von Frisch decoded the dance in the 1940s and shared the 1973 Nobel Prize in "
        "Physiology or Medicine for his work on bee communication."
    ),
    "Python threads": (
        "CPython's global interpreter lock allows only one thread to execute Python bytecode at "
        "a time, so threads cannot use several CPU cores for pure Python code.\n\n"
        "Threads still help with input and output, because the lock is released while a thread "
        "waits on a socket. For CPU-bound work, the multiprocessing module runs separate "
        "interpreters in separate processes."
    ),
}
# A question, the title of the document that answers it, words of the chunk that does.
QUESTIONS = [
    ("Why do some volcanoes explode violently while others ooze lava?", "Volcanoes", "trap gas"),
    ("What warning signs come before a volcanic eruption?", "Volcanoes", "earthquakes"),
    ("How long should sourdough dough ferment?", "Sourdough", "four to six hours"),
    ("At what temperature is the sourdough loaf baked?", "Sourdough", "250 °C"),
    ("How is a TCP connection set up?", "TCP", "three-way handshake"),
    ("What do Reno and CUBIC do when packets are lost?", "TCP", "congestion window"),
    ("Who won a Nobel prize for decoding the bee dance?", "Honey bees", "von Frisch"),
    ("How do bees show the direction of flowers?", "Honey bees", "relative to the sun"),
    (
        "What should I use instead of threads for CPU-bound work?",
        "Python threads",
        "multiprocessing",
    ),
]
SMALL_CHUNKS = {"chunk_chars": 300, "chunk_overlap": 60}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ModelRegistry]:
    """The server's default models (dtesn-echo, dtesn-embed), started once for the file."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"))
    models = ModelRegistry.from_settings(settings)
    async with AsyncExitStack() as stack:
        await models.start(stack)
        yield models


@pytest_asyncio.fixture(loop_scope="module")
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = Store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    await opened.start()
    yield opened
    await opened.close()


class Instances:
    """Started module instances (closed at the end) and clients that call them."""

    def __init__(self, registry: ModelRegistry, tmp_path: Path) -> None:
        self.registry, self.tmp_path = registry, tmp_path
        self.stack = AsyncExitStack()

    async def start(
        self, store: Store, project: str = "alpha", module: str = "docs", **config: Any
    ) -> tuple[RagModule, httpx.AsyncClient]:
        services = ModuleServices(
            models=lambda: self.registry,
            settings=lambda: Settings(data_dir=self.tmp_path),
            store=store,
        )
        context = ModuleContext(
            project, module, "1", self.tmp_path / project / module, {}, services
        )
        instance = RagModule(context, RagModule.Config(**config))
        await instance.start()
        self.stack.push_async_callback(instance.close)
        transport = httpx.ASGITransport(app=instance, root_path=context.prefix)
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        self.stack.push_async_callback(client.aclose)
        return instance, client


@pytest_asyncio.fixture(loop_scope="module")
async def instances(registry: ModelRegistry, tmp_path: Path) -> AsyncIterator[Instances]:
    made = Instances(registry, tmp_path)
    async with made.stack:
        yield made


async def upload(client: httpx.AsyncClient, text: str, title: str | None = None) -> dict:
    body: dict[str, Any] = {"text": text}
    if title is not None:
        body["title"] = title
    response = await client.post("/documents", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert "Traceback" not in error["message"]
    return error


def minimal_pdf(pages: list[list[str]]) -> bytes:
    """A PDF of text lines in Helvetica, one list of lines per page, written by hand."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    font = 3 + 2 * len(pages)
    for i, lines in enumerate(pages):
        content = "BT /F1 12 Tf 72 720 Td 16 TL " + " ".join(
            f"({line}) Tj T*" for line in lines
        ) + " ET"  # fmt: skip
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    trailer = f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n"
    out += trailer.encode() + b"%%EOF\n"
    return out


@on_module_loop
async def test_a_question_retrieves_the_chunk_that_answers_it(
    instances: Instances, store: Store
) -> None:
    _, client = await instances.start(store, **SMALL_CHUNKS)
    ids = {}
    for title, text in CORPUS.items():
        record = await upload(client, text, title)
        assert record["chunk_count"] == len(chunk_text(text, 300, 60)) > 1
        ids[title] = record["id"]
    for question, title, words in QUESTIONS:
        response = await client.post("/search", json={"query": question, "top_k": 3})
        assert response.status_code == 200, response.text
        best = response.json()["data"][0]
        assert (best["title"], best["document_id"]) == (title, ids[title]), question
        assert words in best["text"], (question, best["text"])
        assert 0 <= best["score"] <= 1
    # The chat answer is grounded in the same chunk, cited first.
    question, title, words = QUESTIONS[0]
    response = await client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 16,
              "temperature": 0},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "dtesn-echo"  # config chat_model: the request named none
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] <= 16
    citations = answer["citations"]
    assert [c["index"] for c in citations] == list(range(1, len(citations) + 1))
    assert len(citations) == 4  # config top_k
    first = citations[0]
    assert set(first) == {"index", "document_id", "title", "chunk_index", "score", "text"}
    assert (first["document_id"], first["title"]) == (ids[title], title)
    assert words in first["text"]
    # The grounded prompt is longer than the question alone: the passages went to the model.
    assert answer["usage"]["prompt_tokens"] > len(question) + sum(len(c["text"]) for c in citations)


@on_module_loop
async def test_upload_list_get_delete_round_trip(instances: Instances, store: Store) -> None:
    _, client = await instances.start(store)
    first = await upload(client, CORPUS["TCP"])
    assert first["object"] == "document" and first["id"].startswith("doc_")
    assert first["title"] == CORPUS["TCP"].splitlines()[0][:100]  # from the first line
    assert first["chunk_count"] == 1 and first["media_type"] == "text/plain"
    assert first["bytes"] == len(CORPUS["TCP"].encode()) and first["embedding_model"]
    second = await upload(client, CORPUS["Sourdough"], "Bread")

    listed = (await client.get("/documents")).json()
    assert [d["id"] for d in listed["data"]] == [second["id"], first["id"]]  # newest first
    assert listed["has_more"] is False
    page = (await client.get("/documents", params={"limit": 1})).json()
    assert [d["id"] for d in page["data"]] == [second["id"]] and page["has_more"] is True
    rest = (await client.get("/documents", params={"limit": 1, "after": page["last_id"]})).json()
    assert [d["id"] for d in rest["data"]] == [first["id"]] and rest["has_more"] is False

    assert (await client.get(f"/documents/{first['id']}")).json() == first
    chunks = (await client.get(f"/documents/{first['id']}/chunks")).json()["data"]
    assert [c["text"] for c in chunks] == [CORPUS["TCP"]]

    deleted = await client.delete(f"/documents/{first['id']}")
    assert deleted.json() == {"id": first["id"], "object": "document.deleted", "deleted": True}
    assert_error(await client.get(f"/documents/{first['id']}"), 404, "document_id")
    assert_error(await client.delete(f"/documents/{first['id']}"), 404, "document_id")
    assert [d["id"] for d in (await client.get("/documents")).json()["data"]] == [second["id"]]
    hits = (await client.post("/search", json={"query": "TCP handshake SYN"})).json()["data"]
    assert all(hit["document_id"] == second["id"] for hit in hits)


@on_module_loop
async def test_projects_see_only_their_own_documents(instances: Instances, store_url: str) -> None:
    # store_url (tests/conftest.py): a SQLite file, then a fresh PostgreSQL database.
    shared = Store(store_url)
    await shared.start()
    instances.stack.push_async_callback(shared.close)
    _, alpha = await instances.start(shared, project="alpha")
    _, beta = await instances.start(shared, project="beta")
    _, other_module = await instances.start(shared, project="alpha", module="notes")
    mine = await upload(alpha, CORPUS["Honey bees"], "Bees")
    theirs = await upload(beta, CORPUS["Volcanoes"], "Volcanoes")

    for client, own in ((alpha, mine), (beta, theirs)):
        listed = (await client.get("/documents")).json()["data"]
        assert [d["id"] for d in listed] == [own["id"]]
    assert (await other_module.get("/documents")).json()["data"] == []
    assert_error(await alpha.get(f"/documents/{theirs['id']}"), 404, "document_id")
    assert_error(await alpha.get(f"/documents/{theirs['id']}/chunks"), 404, "document_id")
    assert_error(await alpha.delete(f"/documents/{theirs['id']}"), 404, "document_id")
    assert (await beta.get(f"/documents/{theirs['id']}")).status_code == 200  # still there
    # Retrieval never reaches across: alpha asked about volcanoes gets bees or nothing.
    hits = (await alpha.post("/search", json={"query": "volcano magma eruption"})).json()["data"]
    assert {hit["document_id"] for hit in hits} <= {mine["id"]}
    chat = await alpha.post(
        "/v1/chat/completions",
        json={"model": "dtesn-echo", "max_tokens": 4,
              "messages": [{"role": "user", "content": "What makes volcanoes explode?"}]},
    )  # fmt: skip
    assert {c["document_id"] for c in chat.json()["citations"]} <= {mine["id"]}

    # A new instance of alpha (a restart) loads alpha's documents, and only those.
    _, restarted = await instances.start(shared, project="alpha")
    hits = (await restarted.post("/search", json={"query": "waggle dance"})).json()["data"]
    assert hits and {hit["document_id"] for hit in hits} == {mine["id"]}


@on_module_loop
async def test_two_instances_of_one_module_see_each_others_changes(
    instances: Instances, store: Store
) -> None:
    # Two workers serving the same project and module share one store.
    _, first = await instances.start(store)
    _, second = await instances.start(store)
    record = await upload(first, CORPUS["Sourdough"], "Bread")
    hits = (await second.post("/search", json={"query": "sourdough starter"})).json()["data"]
    assert [hit["document_id"] for hit in hits] == [record["id"]]
    assert (await first.delete(f"/documents/{record['id']}")).status_code == 200
    assert (await second.post("/search", json={"query": "sourdough"})).json()["data"] == []


@on_module_loop
async def test_pdf_and_markdown_files_are_parsed(instances: Instances, store: Store) -> None:
    _, client = await instances.start(store)
    pdf = minimal_pdf(
        [
            ["Glaciers form where more snow falls in winter", "than melts in summer."],
            ["Meltwater at the base lubricates the bed", "and the glacier slides faster."],
        ]
    )
    response = await client.post(
        "/documents",
        files={"file": ("glaciers.pdf", pdf, "application/pdf")},
        data={"metadata": json.dumps({"source": "test"})},
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["media_type"] == "application/pdf" and record["filename"] == "glaciers.pdf"
    assert record["title"] == "glaciers.pdf" and record["metadata"] == {"source": "test"}
    assert record["bytes"] == len(pdf)
    text = (await client.get(f"/documents/{record['id']}/chunks")).json()["data"][0]["text"]
    assert "more snow falls in winter" in text and "glacier slides faster" in text
    assert text.index("winter") < text.index("Meltwater")  # pages in order

    markdown = b"# Espresso\n\nGrind finer when the shot runs fast and tastes sour.\n"
    response = await client.post(
        "/documents",
        files={"file": ("coffee.md", markdown, "application/octet-stream")},
        data={"title": "Coffee notes"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["media_type"] == "text/markdown"
    assert response.json()["title"] == "Coffee notes"

    hits = (await client.post("/search", json={"query": "why does my glacier slide?"})).json()
    assert hits["data"][0]["document_id"] == record["id"]
    hits = (await client.post("/search", json={"query": "sour espresso shot"})).json()
    assert hits["data"][0]["title"] == "Coffee notes"


@on_module_loop
async def test_the_openai_sdk_reads_the_grounded_answer(instances: Instances, store: Store) -> None:
    import openai

    instance, _ = await instances.start(store)
    transport = httpx.ASGITransport(app=instance, root_path="/alpha/docs")
    async with httpx.AsyncClient(transport=transport) as http_client:
        sdk = openai.AsyncOpenAI(
            api_key="unused", base_url="http://testserver/v1", http_client=http_client
        )
        uploaded = await http_client.post(
            "http://testserver/documents", json={"text": CORPUS["Honey bees"]}
        )
        assert uploaded.status_code == 201
        completion = await sdk.chat.completions.create(
            model="dtesn-echo",
            messages=[{"role": "user", "content": "Who decoded the bee dance?"}],
            max_tokens=8,
        )
        assert completion.choices[0].message.role == "assistant"
        citations = (completion.model_extra or {})["citations"]
        assert "von Frisch" in citations[0]["text"]
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk.chat.completions.create(
                model="dtesn-echo", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        assert raised.value.body["param"] == "stream"  # type: ignore[index]


@on_module_loop
async def test_bad_input_is_a_4xx_naming_the_field(instances: Instances, store: Store) -> None:
    _, client = await instances.start(store, max_document_bytes=2000)
    post = client.post
    assert_error(await post("/documents", json={"title": "t"}), 400, "text")
    assert_error(await post("/documents", json={"text": ""}), 400, "text")
    assert_error(await post("/documents", json={"text": " \n\n "}), 400, "text")
    assert_error(await post("/documents", json={"text": "x", "colour": 1}), 400, "colour")
    assert_error(await post("/documents", json={"text": "x", "metadata": [1]}), 400, "metadata")
    assert_error(await post("/documents", json={"text": "é" * 1500}), 413, "text")
    error = assert_error(
        await post("/documents", content=b"{nope", headers={"content-type": "application/json"}),
        400, None,
    )  # fmt: skip
    assert error["code"] == "invalid_json"
    assert_error(
        await post("/documents", content=b"a,b", headers={"content-type": "text/csv"}), 415, None
    )
    files = {"file": ("image.png", b"\x89PNG\r\n", "image/png")}
    assert_error(await post("/documents", files=files), 415, "file")
    assert_error(await post("/documents", files={"other": ("a.txt", b"x")}), 400, "other")
    assert_error(await post("/documents", files={"title": (None, "t")}), 400, "file")
    assert_error(await post("/documents", data={"text": "x"}), 415, None)  # a urlencoded form
    files = {"file": ("a.pdf", b"%PDF-1.4 not really", "application/pdf")}
    assert_error(await post("/documents", files=files), 400, "file")
    files = {"file": ("a.txt", b"caf\xe9", "text/plain")}
    assert_error(await post("/documents", files=files), 400, "file")
    files = {"file": ("a.txt", b"x" * 3000, "text/plain")}
    assert_error(await post("/documents", files=files), 413, "file")
    files = {"file": ("a.txt", b"fine", "text/plain")}
    assert_error(await post("/documents", files=files, data={"metadata": "{"}), 400, "metadata")

    assert_error(await post("/search", json={}), 400, "query")
    assert_error(await post("/search", json={"query": "x", "top_k": 0}), 400, "top_k")
    assert_error(await post("/search", json={"query": "x", "min_score": 2}), 400, "min_score")

    chat = "/v1/chat/completions"
    assert_error(await post(chat, json={}), 400, "messages")
    user = [{"role": "user", "content": "hi"}]
    assert_error(await post(chat, json={"messages": user, "stream": True}), 400, "stream")
    assistant_only = [{"role": "assistant", "content": "hello"}]
    assert_error(await post(chat, json={"messages": assistant_only}), 400, "messages")
    assert_error(await post(chat, json={"messages": user, "model": "nope"}), 404, "model")
    assert_error(await post(chat, json={"messages": user, "max_tokens": 0}), 400, "max_tokens")
    bad_role = [{"role": "wizard", "content": "hi"}]
    assert_error(await post(chat, json={"messages": bad_role}), 400, "messages[0].role")

    assert_error(await client.get("/documents", params={"limit": 0}), 400, "limit")
    # Bodies past twice max_document_bytes (plus 64 KiB of framing) are refused unread.
    assert_error(await post("/search", json={"query": "x" * 80_000}), 413, None)
    assert_error(await client.get("/nowhere"), 404, None)
    response = await client.put("/documents")
    assert_error(response, 405, None)
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


@on_module_loop
async def test_an_instance_not_started_answers_503(registry: ModelRegistry, tmp_path: Path) -> None:
    services = ModuleServices(models=lambda: registry, settings=lambda: None, store=None)
    context = ModuleContext("alpha", "docs", "1", tmp_path, {}, services)
    instance = RagModule(context, RagModule.Config())
    with pytest.raises(RuntimeError, match="store"):
        await instance.start()  # no store: the pool marks the module failed
    transport = httpx.ASGITransport(app=instance, root_path="/alpha/docs")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert_error(await client.get("/documents"), 503, None)


def test_config_errors_name_the_field() -> None:
    for fields, name in (
        ({"chunk_chars": 100, "chunk_overlap": 100}, "chunk_overlap"),
        ({"system_prompt": "no placeholder"}, "system_prompt"),
        ({"top_k": 0}, "top_k"),
        ({"retrieval": "magic"}, "retrieval"),
        ({"colour": "blue"}, "colour"),
    ):
        with pytest.raises(ValidationError) as raised:
            RagModule.Config(**fields)
        assert raised.value.errors()[0]["loc"] == (name,)


def test_chunks_respect_size_overlap_and_boundaries() -> None:
    sentences = [f"Sentence {i} says something about topic {i % 3}." for i in range(40)]
    text = "# Heading\n\n" + " ".join(sentences[:20]) + "\n\n" + " ".join(sentences[20:])
    chunks = chunk_text(text, 200, 50)
    assert all(len(c.text) <= 200 and c.text == text[c.start : c.end] for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for sentence in sentences:  # every sentence whole in some chunk
        assert any(sentence in c.text for c in chunks)
    for chunk in chunks:  # chunks start and end on sentence boundaries
        assert chunk.text.startswith(("Sentence", "# Heading"))
        assert chunk.text.endswith((".", "Heading"))
    pairs = list(itertools.pairwise(chunks))
    assert all(following.start > previous.start for previous, following in pairs)
    overlaps = [p.end - f.start for p, f in pairs if f.start < p.end]
    assert overlaps and max(overlaps) <= 50
    # A chunk at least half full does not take the first sentences of a paragraph that will
    # not fit in it whole (greedy packing would have added "Sentence 3" to the first chunk).
    text = " ".join(sentences[:3]) + "\n\n" + " ".join(sentences[3:12])
    assert chunk_text(text, 200, 50)[0].text == " ".join(sentences[:3])
    assert chunk_text("   \n\n ", 200, 50) == []
    assert [c.text for c in chunk_text("x" * 450, 200, 50)] == ["x" * 200, "x" * 200, "x" * 50]
