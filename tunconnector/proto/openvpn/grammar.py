"""openvpn's word splitting (``options.c`` ``parse_line``), shared by the config reader and
the management interface, which reads its commands with the same rules.

Pure, so the sans-I/O management command handlers under proto/ can use it as well as
:mod:`tunconnector.ovpnconfig`.
"""

from __future__ import annotations

__all__ = ["split_line"]


def split_line(line: str) -> list[str]:
    """Words of a config line as openvpn's ``parse_line`` makes them.

    Raises ValueError (with openvpn's reason) on a bad backslash or an open quote."""
    words: list[str] = []
    buf: list[str] = []
    state = "initial"  # initial | unquoted | dquoted | squoted
    backslash = False
    for ch in line + "\0":
        if not backslash and ch == "\\" and state != "squoted":
            backslash = True
            continue
        out: str | None = None
        done = False
        space = ch == "\0" or ch.isspace()
        if state == "initial":
            if not space:
                if ch in ";#":
                    break
                if not backslash and ch == '"':
                    state = "dquoted"
                elif not backslash and ch == "'":
                    state = "squoted"
                else:
                    out, state = ch, "unquoted"
        elif state == "unquoted":
            if not backslash and space:
                done = True
            else:
                out = ch
        elif state == "dquoted":
            if not backslash and ch == '"':
                done = True
            elif ch != "\0":
                out = ch
        else:  # squoted: no escapes
            if ch == "'":
                done = True
            elif ch != "\0":
                out = ch
        if done:
            words.append("".join(buf))
            buf = []
            state = "initial"
        if backslash and out is not None and not (out in '\\"' or out.isspace()):
            raise ValueError("bad backslash ('\\') usage: use double backslashes "
                             "(\\\\) or quotes")
        backslash = False
        if out is not None and out != "\0":
            buf.append(out)
    if state == "dquoted":
        raise ValueError('no closing quotation (")')
    if state == "squoted":
        raise ValueError("no closing single quotation (')")
    return words
