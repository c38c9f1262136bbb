"""The codec's exception types: every malformed input ends in one of these, with a one-line message."""


class CodecError(Exception):
    """Any error the codec reports to a user (bad arguments, unreadable files, wrong model)."""


class BitstreamError(CodecError):
    """A container or payload that is malformed, truncated, corrupt or out of bounds."""


class UnknownModel(BitstreamError):
    """A well-formed bitstream made by another model than the decoder's: a deployment mismatch, not damage."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """A native library's message cut to its first line (ONNX Runtime's run to pages), or the type's name."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__
