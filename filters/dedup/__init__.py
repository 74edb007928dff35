"""Dedup stages: exact (`exact_dedup`), MinHash near-duplicates (`minhash_dedup`), semantic (`semantic_dedup`).

Each is a GlobalStage that sets `_drop_reason` on the duplicates it finds and removes nothing;
`filters.dedup.blocks` says how they run on Ray without gathering the dataset in one process.
"""
