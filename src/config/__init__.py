"""The params.yaml schema: one strict pydantic model per section (schema), the only place a
default lives, and the one-line message that names the file, the key, what was wrong and the fix
(messages). The choices of model.cell are the cell registry's names (src.model.cells).
Never opens params.yaml: the stages and entry points read it and pass a dict.
"""
