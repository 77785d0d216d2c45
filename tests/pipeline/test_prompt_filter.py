import json

import pytest

from pipeline import schemas
from pipeline.config import DecontaminateConfig, DedupConfig
from pipeline.errors import InputError
from pipeline.prompt_filter import contaminated, embed, filter_prompts, ngrams

TEXTS = [
    "What is the capital of France?",
    "Write a short poem about autumn leaves falling in the park.",
    "what is the capital of france",          # near-duplicate of 0
    "Explain how a bicycle gear system lets a rider climb steep hills with less effort.",
    "What is the capital of Germany?",         # similar form, different question: kept
]


def table(texts):
    return schemas.from_rows([{"prompt_id": f"p{i}", "messages": [{"role": "user", "content": t}]}
                              for i, t in enumerate(texts)], "prompts")


def test_embeddings_are_normalised_and_semantic():
    e = embed(TEXTS, "bundled:minilm-l6")
    assert e.shape == (5, 384) and abs(float(e[0] @ e[0]) - 1) < 1e-5
    assert float(e[0] @ e[2]) > 0.9 > float(e[0] @ e[4]) > float(e[0] @ e[1])


def test_embeddings_match_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from pipeline.models import resolve

    st = SentenceTransformer(resolve("bundled:minilm-l6").path, device="cpu")
    want = st.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True)
    assert float((embed(TEXTS, "bundled:minilm-l6") - want).abs().max()) < 1e-5


def test_near_duplicates_drop_the_later_prompt():
    kept, funnel, dropped = filter_prompts(table(TEXTS), DedupConfig(), DecontaminateConfig())
    assert kept.column("prompt_id").to_pylist() == ["p0", "p1", "p3", "p4"]
    assert dropped == [{"prompt_id": "p2", "filter": "near_duplicate", "match": "p0"}]
    assert (funnel[0]["rows_in"], funnel[0]["rows_out"]) == (5, 4)


def test_decontamination_records_the_benchmark_id(tmp_path):
    bench = tmp_path / "gsm.jsonl"
    bench.write_text(json.dumps({"id": "q17", "question": "Explain how a bicycle gear system lets a rider climb steep hills."}) + "\n")
    txt = tmp_path / "other.txt"
    txt.write_text("nothing in common here at all with any prompt we have\n")
    cfg = DecontaminateConfig(benchmarks=[str(bench), str(txt)], ngram=8)
    assert contaminated(TEXTS, cfg) == {3: "gsm.jsonl:q17"}
    kept, funnel, dropped = filter_prompts(table(TEXTS), DedupConfig(near_duplicates=False), cfg)
    assert kept.column("prompt_id").to_pylist() == ["p0", "p1", "p2", "p4"]
    assert dropped == [{"prompt_id": "p3", "filter": "decontaminate", "match": "gsm.jsonl:q17"}]
    assert contaminated(TEXTS, DecontaminateConfig(benchmarks=[str(bench)], ngram=13)) == {}


def test_ngrams_ignore_case_and_punctuation():
    assert ngrams("A, b. C!", 3) == {("a", "b", "c")} and ngrams("a b", 3) == set()


def test_missing_benchmark_file_is_named(tmp_path):
    with pytest.raises(InputError, match="curate.decontaminate.benchmarks: .*nope.jsonl' does not exist"):
        contaminated(TEXTS, DecontaminateConfig(benchmarks=[str(tmp_path / "nope.jsonl")]))
