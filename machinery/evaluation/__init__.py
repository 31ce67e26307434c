"""Evaluation with the field's own tools, through the Hugging Face export of a run (machinery/interop/):

    exports.py        the export of a run, cached in a temporary folder keyed by its weights' checksum
    harness.py        lm-evaluation-harness on runs: the tasks, the results saved into the run folder
    lm_eval_model.py  the harness's Hugging Face model, scoring texts as model_comparison.py does
    tasks/            the bundled offline task (bits per byte on the bundled validation stories)
    serving.py        `transformers serve` on an export: an OpenAI-compatible server on 127.0.0.1
    openai_api.py     one request to an OpenAI-compatible endpoint, with bounded retries
    judge.py          the TinyStories paper's evaluation: a large model grades sampled story continuations

evaluate.py and model_comparison.py (--judge_url) are the command lines.
"""
