"""The codec's exception types: every malformed input ends in one of these, with a one-line message."""


class CodecError(Exception):
    """Any error the codec reports to a user (bad arguments, unreadable files, wrong model)."""


class BitstreamError(CodecError):
    """A container or payload that is malformed, truncated, corrupt or out of bounds."""
