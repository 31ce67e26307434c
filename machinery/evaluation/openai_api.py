"""One prompt to an OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, Ollama, `transformers serve`),
its answer back as text. Standard library only.

Failures are one line (ApiError, a ValueError), never a traceback:
- the server cannot be reached (refused, unknown host): at once, nothing to wait for;
- a rate limit (429), a server error (5xx), a timeout or a dropped connection: retried `retries` times with
  exponential backoff (a Retry-After header is honoured, up to max_wait seconds), then one line;
- any other HTTP error (400 bad request, 401 bad key, 404 unknown model): at once, with the server's message.
The API key is read from the environment variable key_env (never from a file); without it no key is sent,
as local servers want.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

APIS = ("chat", "completions")  # /v1/chat/completions (messages) or /v1/completions (a raw prompt)
RETRY_STATUS = (429, 500, 502, 503, 504)


class ApiError(ValueError):
    """The endpoint did not answer usably: printed as one line."""


@dataclass
class Endpoint:
    url: str                       # base URL (http://127.0.0.1:8000/v1) or the full .../completions URL
    model: str                     # the model name the server knows
    api: str = "chat"              # chat or completions
    key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (unset: no key is sent)
    max_tokens: int = 200          # longest answer, in tokens
    timeout: float = 60.0          # seconds for one request
    retries: int = 3               # further tries after a rate limit, a server error or a timeout
    backoff: float = 1.0           # seconds before the first retry, doubled each time
    max_wait: float = 30.0         # longest wait between tries, Retry-After included

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ApiError(f"judge URL {self.url!r} must start with http:// or https://")
        if self.api not in APIS:
            raise ApiError(f"api={self.api!r} is not one of {', '.join(APIS)}")
        if not self.model:
            raise ApiError("name the judge's model (the name the server knows it by)")
        if self.timeout <= 0 or self.retries < 0 or self.max_tokens < 1:
            raise ApiError(f"timeout={self.timeout} must be > 0, retries={self.retries} >= 0 and "
                           f"max_tokens={self.max_tokens} >= 1")

    @property
    def endpoint_url(self) -> str:
        url = self.url.rstrip("/")
        if url.endswith(("/chat/completions", "/completions")):
            return url
        return f"{url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    def payload(self, prompt: str) -> dict:
        """Greedy (temperature 0): the same story gets the same grades."""
        body = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens}
        if self.endpoint_url.endswith("/chat/completions"):
            return {**body, "messages": [{"role": "user", "content": prompt}]}
        return {**body, "prompt": prompt}

    def check_reachable(self) -> None:
        """ApiError unless a TCP connection to the endpoint's host opens: a wrong URL is said at once, before
        any work that would wait for the judge (no request is sent, nothing is billed)."""
        parts = urllib.parse.urlsplit(self.endpoint_url)
        if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
            return  # through a proxy: the first request will tell
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=min(self.timeout, 10)).close()
        except OSError as e:
            raise ApiError(f"cannot reach {self.endpoint_url}: {e}") from None

    def complete(self, prompt: str) -> str:
        """The answer's text."""
        reply = self._post(self.payload(prompt))
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise ApiError(f"{self.endpoint_url} answered without a completion: {json.dumps(reply)[:200]}") from None
        return text or ""

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.endpoint_url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    raise ApiError(f"{self.endpoint_url} answered with something that is not JSON: "
                                   f"{raw[:200]!r}") from None
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}: {_detail(e)}"
                if e.code not in RETRY_STATUS:
                    raise ApiError(f"{self.endpoint_url}: {problem}{self._key_hint(e.code)}") from None
                wait = _retry_after(e) if e.code == 429 else None
            except urllib.error.URLError as e:
                if not _is_timeout(e.reason):
                    raise ApiError(f"cannot reach {self.endpoint_url}: {e.reason}") from None
                problem, wait = f"no answer within {self.timeout:g} s", None
            except (TimeoutError, socket.timeout):
                problem, wait = f"no answer within {self.timeout:g} s", None
            except (ConnectionError, http.client.HTTPException) as e:  # dropped mid-answer
                problem, wait = f"connection dropped ({e or type(e).__name__})", None
            if attempt == self.retries:
                break
            time.sleep(min(self.max_wait, wait if wait is not None else self.backoff * 2 ** attempt))
        raise ApiError(f"{self.endpoint_url}: {problem} (gave up after {self.retries + 1} tries)")

    def _key_hint(self, code: int) -> str:
        if code not in (401, 403):
            return ""
        state = "set" if os.environ.get(self.key_env) else "not set"
        return f" (the API key is read from ${self.key_env}, which is {state})"


def _is_timeout(reason) -> bool:
    return isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason)


def _detail(error: urllib.error.HTTPError) -> str:
    """The server's error message, short: {"error": {"message": ...}}, {"detail": ...} or the raw text."""
    try:
        raw = error.read().decode("utf-8", "replace")
    except OSError:
        return ""
    try:
        body = json.loads(raw)
        message = body.get("error", body.get("detail", raw)) if isinstance(body, dict) else raw
        if isinstance(message, dict):
            message = message.get("message", message)
    except ValueError:
        message = raw
    return " ".join(str(message).split())[:300]


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return max(0.0, float(error.headers.get("Retry-After", "")))
    except (TypeError, ValueError):
        return None
