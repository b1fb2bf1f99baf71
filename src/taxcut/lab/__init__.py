"""The alignment lab: a tiny chat model trained here (SFT), aligned with RAFT, showing a real alignment tax.

Everything is built locally and deterministically from a seed, with no download: a character tokenizer, a tiny
Llama, synthetic capability tasks (reversed-digit addition, string reversal, a made-up knowledge base), chat
prompts and a programmatic reward. The lab's tasks are ordinary JSONL tax tasks and its reward an ordinary reward
function, so the lab pair goes through the same ``taxcut sweep`` as any user's pair.
"""
