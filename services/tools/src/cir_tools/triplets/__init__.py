"""InstructCIR's training triplets from image-only data (`cir triplets`, method.md 4.2).

Pairs of a collection's images (`pairing`), both captioned by the captioner and their difference written by
the reasoner (`job`), appended to a JSONL file that an interrupted run resumes (`output`). The collection is
read from the retriever (`gallery`). The pairing and output modules know no gRPC.
"""
