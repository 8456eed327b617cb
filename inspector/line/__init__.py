"""The line layer: defects placed on the coil, one report per coil, roll marks found (`inspector coils`).

    inspect:events ─XREADGROUP─> records.parse (an event -> a compact record, or a reason it is bad)
        ─> store.fold (one fenced Lua call: append records to their coils' state + XACK)
    inspect:{main}:coil-ends ─XREADGROUP─> store.end (fenced: the coil is ended, with its length)
    service (every close_every_s): a coil whose deadline has passed ─> store.state
        ─> geometry (px -> strip mm, parts merged across frame boundaries and camera seams)
        ─> periodic (roll marks) ─> grade (acceptance matrix) ─> report (the entry, JSON, PNG, HTML)
        ─> store.close (fenced Lua: XADD inspect:{main}:coils, coil closed) ─> files ─> store.finish (state freed)

Every key comes from `keys.LineKeys`, built from the `coils:` config section in one place; every Lua script is
handed all its keys in KEYS. The report is a pure function of the coil's stored records, whatever order they were
folded in, so replicas and restarts give the same bytes.
"""
