"""Tool calls in the model's own format: the prompt, the grammar for a forced call, and a
streaming parser that turns the model's text into OpenAI tool-call deltas.

Two formats, chosen from the GGUF's chat template:

- `xml` (Qwen3.5, Qwen3-Coder: the template mentions `<function=` and `<parameter=`):
      <tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n</function>\n</tool_call>
  values are raw text for string parameters and JSON otherwise; the arguments reach the
  client as one JSON object, built in pieces as the parameters stream.
- `hermes` (Qwen2.5/Qwen3 and the default for templates that know no tools):
      <tool_call>\n{"name": NAME, "arguments": {...}}\n</tool_call>
  the arguments object's own text is streamed as the model writes it.

A template that does not render `tools` (the 135M default's, the synthetic ones') gets the
tool list as a system message in the hermes format, as Qwen2.5's template writes it.

The parser is the same for streamed and whole answers: feeding the whole text at once or
token by token gives the same name and the same concatenated arguments (held-back tails
guarantee it), so the SDK's stream helper rebuilds exactly what a non-streamed call returns.
"""
from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["CLOSE", "HERMES", "OPEN", "ToolError", "ToolStream", "XML", "call_grammar", "chosen", "detect_format",
           "functions", "history", "system_text"]

HERMES, XML = "hermes", "xml"
OPEN, CLOSE = "<tool_call>", "</tool_call>"
# string keywords the grammar converter enforces itself (a plain string parameter is raw XML text)
_STRING_CONSTRAINTS = {"pattern", "format", "minLength", "maxLength", "const"}


class ToolError(ValueError):
    def __init__(self, message: str, param: str = "tools"):
        super().__init__(message)
        self.param = param


def detect_format(template: str | None) -> str:
    if template and "<function=" in template and "<parameter=" in template:
        return XML
    return HERMES


def functions(tools: list[dict] | None) -> list[dict]:
    """The function definitions of an OpenAI `tools` list, checked."""
    out = []
    for i, t in enumerate(tools or []):
        if (not isinstance(t, dict) or t.get("type", "function") != "function"
                or not isinstance(t.get("function"), dict)):
            raise ToolError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        f = t["function"]
        if not isinstance(f.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", f["name"]):
            raise ToolError(f"tools[{i}].function.name must be 1-64 letters, digits, '_', '.' or '-'")
        params = f.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object")
        out.append({"name": f["name"], "description": f.get("description", ""), "parameters": params})
    return out


def chosen(tool_choice: Any, funcs: list[dict]) -> tuple[str, list[dict]]:
    """(mode, allowed functions): mode is none, auto or required (a named function is
    required with that one function allowed)."""
    if tool_choice is None or tool_choice == "auto":
        return ("auto" if funcs else "none"), funcs
    if tool_choice == "none":
        return "none", []
    if tool_choice == "required":
        if not funcs:
            raise ToolError("tool_choice 'required' needs tools", "tool_choice")
        return "required", funcs
    if isinstance(tool_choice, dict):
        is_function = tool_choice.get("type", "function") == "function"
        name = (tool_choice.get("function") or {}).get("name") if is_function else None
        for f in funcs:
            if f["name"] == name:
                return "required", [f]
        raise ToolError(f"tool_choice names function {name!r}, which is not in tools", "tool_choice")
    raise ToolError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
                    "tool_choice")


def system_text(funcs: list[dict]) -> str:
    """A compact hermes tool prompt for templates that do not render tools."""
    lines = "\n".join(json.dumps({"type": "function", "function": f}, ensure_ascii=False, separators=(",", ":"))
                      for f in funcs)
    return (f"# Tools\nYou may call these functions:\n<tools>\n{lines}\n</tools>\nTo call one, reply with:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def history(messages: list[dict], fmt: str, template_has_tools: bool) -> list[dict]:
    """Assistant tool calls from an OpenAI history, for the template: arguments as a mapping
    (Qwen templates iterate over them); for a template without tools, written into the
    content in the hermes form and tool results as <tool_response> user turns."""
    out = []
    for m in messages:
        m = dict(m)
        calls = m.get("tool_calls")
        if m.get("role") == "assistant" and calls:
            fixed = []
            for c in calls:
                fn = dict((c or {}).get("function") or {})
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args) if args.strip() else {}
                    except ValueError:
                        raise ToolError("an assistant message's tool_calls arguments are not JSON",
                                        "messages") from None
                fixed.append(dict(c, function=fn))
            m["tool_calls"] = fixed
            if not template_has_tools:
                calls = (json.dumps({"name": c["function"].get("name"),
                                     "arguments": c["function"].get("arguments", {})}, ensure_ascii=False)
                         for c in fixed)
                text = "".join(f"\n<tool_call>\n{call}\n</tool_call>" for call in calls)
                m["content"] = ((m.get("content") or "") + text).strip()
                m.pop("tool_calls")
        elif m.get("role") == "tool" and not template_has_tools:
            m = {"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"}
        out.append(m)
    return out


# ---- grammar for a required call --------------------------------------------------------------
def call_grammar(fmt: str, funcs: list[dict]) -> str:
    """GBNF that allows exactly one call of one of `funcs`, arguments following each one's
    parameter schema. Raises structured.SchemaError for a schema it cannot enforce."""
    from qwenkit.llama_api import GrammarBuilder
    from qwenkit.serving.structured import check_schema

    conv = GrammarBuilder()
    lit = conv.literal
    alts = []
    for i, f in enumerate(funcs):
        params = f["parameters"]
        check_schema(params, f"#/tools/{f['name']}/parameters")
        params = conv.resolve_refs(json.loads(json.dumps(params)), f"tool{i}")
        if fmt == HERMES:
            args = conv.schema(params, f"args{i}")
            alts.append(conv.add_rule(f"call{i}", f'{lit(json.dumps(f["name"]) + ", ")} '
                                       f'{lit(chr(34) + "arguments" + chr(34) + ": ")} {args}'))
        else:
            props = params.get("properties") or {}
            required = [k for k in props if k in set(params.get("required") or [])]
            optional = [k for k in props if k not in required]
            parts = []
            for k in required + optional:
                ps = props[k] if isinstance(props[k], dict) else {}
                if ps.get("type") == "string" and "enum" in ps:
                    val = " | ".join(lit(str(v)) for v in ps["enum"])
                    val = conv.add_rule(f"v{i}-{k}", val)
                elif ps.get("type") == "string" and not (_STRING_CONSTRAINTS & set(ps)):
                    val = conv.add_rule("xml-text", '( [^<] | "<" [^/] )*')
                else:
                    val = conv.schema(ps, f"v{i}-{k}")
                p = conv.add_rule(f"p{i}-{k}", f'{lit(f"<parameter={k}>" + chr(10))} {val} '
                                   f'{lit(chr(10) + "</parameter>" + chr(10))}')
                parts.append(p if k in required else f"{p}?")
            alts.append(conv.add_rule(f"call{i}", f'{lit(f["name"] + ">" + chr(10))} {" ".join(parts)}'))
    body = " | ".join(alts)
    if fmt == HERMES:
        conv.add_rule("root", f'{lit(OPEN + chr(10) + "{" + chr(34) + "name" + chr(34) + ": ")} ( {body} ) '
                               f'{lit("}" + chr(10) + CLOSE)}')
    else:
        conv.add_rule("root", f'{lit(OPEN + chr(10) + "<function=")} ( {body} ) '
                               f'{lit("</function>" + chr(10) + CLOSE)}')
    return conv.grammar()


# ---- parsing -----------------------------------------------------------------------------------
def _partial_suffix(buf: str, marker: str) -> int:
    """Length of the longest tail of buf that is a proper prefix of marker."""
    for n in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-n:]):
            return n
    return 0


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_TRAIL = re.compile(r"[\s}]*$")


class ToolStream:
    """Feed text pieces; get events ("content", str), ("call", index, name),
    ("args", index, str). `close()` flushes what was held back."""

    def __init__(self, fmt: str, funcs: list[dict]):
        self.fmt = fmt
        self.types = {f["name"]: {k: (v or {}).get("type") if isinstance(v, dict) else None
                                  for k, v in ((f["parameters"].get("properties") or {}).items())} for f in funcs}
        self.buf = ""
        self.state = "text"
        self.calls = 0
        self.name = ""
        self.first_param = True
        self.key = ""
        self.val_started = False

    # -- public --
    def feed(self, text: str) -> list[tuple]:
        self.buf += text
        out: list[tuple] = []
        while True:
            before = (self.state, len(self.buf))
            getattr(self, "_" + self.state)(out, final=False)
            if (self.state, len(self.buf)) == before:
                return out

    def close(self) -> list[tuple]:
        out: list[tuple] = []
        for _ in range(8):
            before = (self.state, len(self.buf))
            getattr(self, "_" + self.state)(out, final=True)
            if (self.state, len(self.buf)) == before:
                break
        if self.state in ("args",):
            self._end_hermes(self.buf, out)
        elif self.state in ("xval", "xbody") and self.calls:
            if self.state == "xval":
                self._end_value(self.buf, out)
            out.append(("args", self.calls - 1, "{}" if self.first_param else "}"))
        elif self.buf and self.state in ("text", "head"):
            out.append(("content", (OPEN if self.state == "head" else "") + self.buf))
        self.buf = ""
        self.state = "done"
        return out

    # -- states --
    def _text(self, out, final):
        i = self.buf.find(OPEN)
        if i >= 0:
            if i:
                out.append(("content", self.buf[:i]))
            self.buf = self.buf[i + len(OPEN):]
            self.state = "head" if self.fmt == HERMES else "xhead"
            return
        keep = 0 if final else _partial_suffix(self.buf, OPEN)
        if len(self.buf) > keep:
            out.append(("content", self.buf[:len(self.buf) - keep]))
            self.buf = self.buf[len(self.buf) - keep:]

    def _done(self, out, final):
        return

    def _head(self, out, final):
        m = _HEAD.match(self.buf)
        if m and m.end() == len(self.buf) and not final:
            return   # whitespace before the arguments may still come
        if m:
            self.name = json.loads('"' + m.group(1) + '"')
            out.append(("call", self.calls, self.name))
            self.calls += 1
            self.buf = self.buf[m.end():]
            self.state = "args"
            return
        j = self.buf.find(CLOSE)
        if j >= 0:   # not name-first: parse the whole object
            try:
                obj = json.loads(self.buf[:j])
                name, args = obj["name"], obj.get("arguments", {})
                out.append(("call", self.calls, str(name)))
                out.append(("args", self.calls,
                            args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)))
                self.calls += 1
            except (ValueError, KeyError, TypeError):
                out.append(("content", OPEN + self.buf[:j + len(CLOSE)]))
            self.buf = self.buf[j + len(CLOSE):]
            self.state = "text"

    def _args(self, out, final):
        j = self.buf.find(CLOSE)
        if j >= 0:
            self._end_hermes(self.buf[:j], out)
            self.buf = self.buf[j + len(CLOSE):]
            self.state = "text"
            return
        # hold back the trailing run of '}' and whitespace (and a started </tool_call>): the
        # outer object's '}' is in it, and what is emitted never changes afterwards
        tail = _partial_suffix(self.buf, CLOSE)
        body = self.buf[:len(self.buf) - tail]
        m = _TRAIL.search(body)
        cut = m.start() if m else len(body)
        if cut:
            out.append(("args", self.calls - 1, self.buf[:cut]))
            self.buf = self.buf[cut:]

    def _end_hermes(self, body: str, out):
        body = body.rstrip()
        if body.endswith("}"):
            body = body[:-1].rstrip()
        if body:
            out.append(("args", self.calls - 1, body))

    def _xhead(self, out, final):
        s = self.buf.lstrip()
        m = re.match(r"<function=([^>\n]+)>\n?", s)
        if m:
            self.name = m.group(1).strip()
            out.append(("call", self.calls, self.name))
            self.calls += 1
            self.first_param = True
            self.buf = s[m.end():]
            self.state = "xbody"
        elif s and not "<function=".startswith(s[:10]) and (">" in s or len(s) > 80):
            out.append(("content", OPEN + self.buf))
            self.buf = ""
            self.state = "text"

    def _xbody(self, out, final):
        s = self.buf.lstrip()
        m = re.match(r"<parameter=([^>\n]+)>\n?", s)
        if m and m.end() == len(s) and not s.endswith("\n") and not final:
            return   # the newline that may follow the tag is not the value's: wait for it
        if m:
            self.key = m.group(1).strip()
            self.buf = s[m.end():]
            self.state = "xval"
            self.val_started = False
            return
        if s.startswith("</function>"):
            out.append(("args", self.calls - 1, "{}" if self.first_param else "}"))
            rest = s[len("</function>"):].lstrip()
            if rest.startswith(CLOSE):
                rest = rest[len(CLOSE):]
            elif CLOSE.startswith(rest) and not final:
                self.buf = rest
                self.state = "xtail"
                return
            self.buf = rest
            self.state = "text"
            return
        if s and not ("<parameter=".startswith(s[:11]) or "</function>".startswith(s[:11])):
            self.buf = s[1:]   # stray text between parameters: dropped

    def _xtail(self, out, final):
        if not self.buf.strip() and not final:
            return
        self.buf = self.buf.lstrip()
        if self.buf.startswith(CLOSE):
            self.buf = self.buf[len(CLOSE):]
            self.state = "text"
        elif not CLOSE.startswith(self.buf) or final:
            self.state = "text"

    def _is_string(self) -> bool:
        t = self.types.get(self.name, {}).get(self.key)
        return t == "string" or (isinstance(t, list) and "string" in t and len(t) == 1)

    def _start_value(self, out):
        sep = "{" if self.first_param else ", "
        self.first_param = False
        out.append(("args", self.calls - 1, f"{sep}{json.dumps(self.key, ensure_ascii=False)}: "
                    + ('"' if self._is_string() else "")))
        self.val_started = True

    def _end_value(self, raw: str, out):
        if not self.val_started:
            self._start_value(out)
        if raw.endswith("\n"):
            raw = raw[:-1]
        if self._is_string():
            out.append(("args", self.calls - 1, json.dumps(raw, ensure_ascii=False)[1:-1] + '"'))
        else:
            try:
                v = json.dumps(json.loads(raw), ensure_ascii=False)
            except ValueError:
                v = json.dumps(raw.strip(), ensure_ascii=False)
            out.append(("args", self.calls - 1, v))

    def _xval(self, out, final):
        end = "</parameter>"
        j = self.buf.find(end)
        if j >= 0:
            self._end_value(self.buf[:j], out)
            self.buf = self.buf[j + len(end):]
            self.state = "xbody"
            return
        if not self._is_string():
            return   # a JSON value is sent whole
        if not self.val_started:
            self._start_value(out)
        # hold back "\n" + a started "</parameter>" (the value's last newline is not its own)
        keep = _partial_suffix(self.buf, end)
        if len(self.buf) > keep and self.buf[len(self.buf) - keep - 1:len(self.buf) - keep] == "\n":
            keep += 1
        if len(self.buf) > keep:
            piece = self.buf[:len(self.buf) - keep]
            out.append(("args", self.calls - 1, json.dumps(piece, ensure_ascii=False)[1:-1]))
            self.buf = self.buf[len(self.buf) - keep:]
