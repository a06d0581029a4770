"""Speech runs behind the server: POST /v1/models/{name}/transcribe takes uploaded clips (JSON base64 or
multipart 'audio' files, any rate) and answers what Transcriber.transcribe answers; bad audio is a 400 JSON
error naming the clip, never a 500. The run is a tiny asr-gru-small trained on a manifest of synthetic
clips (no eSpeak NG needed): the texts are the model's, whatever they are, and must match the handle's."""
import base64
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

import dlforge
from dlforge.serve import Limits, create_app, load_runs
from tests.serve.conftest import live_server


def tone(rate: int, seconds: float, f: float) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * f * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def wav(x: np.ndarray, rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech-serve")
    rows = ["audio_path,transcript"]
    for i in range(10):
        sf.write(root / f"{i}.wav", tone(16000, 0.4, 300 + 40 * i), 16000)
        rows.append(f"{i}.wav,{['yes', 'no'][i % 2]}")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLFORGE_CACHE", str(root / "cache"))
        dlforge.train("asr-gru-small", data=str(root / "m.csv"), out=root / "run", max_steps=3, batch_size=4,
                      width=16, layers=1, val_fraction=0.2, test_fraction=0.2, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def server(speech_run):
    handles = load_runs([speech_run], device="cpu")
    with live_server(create_app(handles, Limits(max_clips=2, max_audio_seconds=2))) as u:
        yield u, next(iter(handles.values())), next(iter(handles))


def test_models_lists_the_speech_run(server):
    url, h, name = server
    m = httpx.get(f"{url}/v1/models").json()["models"][0]
    assert m["family"] == "speech" and m["name"] == name and set(m["characters"]) == set("yesno")
    assert m["sample_rate"] == 16000
    form = httpx.get(f"{url}/openapi.json").json()["paths"]["/v1/models/{name}/transcribe"]["post"]["requestBody"]
    assert set(form["content"]["multipart/form-data"]["schema"]["properties"]) == {"audio", "beam"}  # was predict's


def test_uploads_are_transcribed_as_the_handle_does(server):
    url, h, name = server
    a, b = tone(16000, 0.5, 330), tone(8000, 0.6, 500)
    want = [r["text"] for r in h.transcribe([(a, 16000), (b, 8000)])]
    beam = [r["text"] for r in h.transcribe([(a, 16000)], beam=4)]
    r = httpx.post(f"{url}/v1/models/{name}/transcribe", json={"audio": [base64.b64encode(wav(a, 16000)).decode(),
                                                                         base64.b64encode(wav(b, 8000, "FLAC")).decode()]})
    assert r.status_code == 200, r.text
    assert [t["text"] for t in r.json()["transcripts"]] == want and r.json()["transcripts"][1]["seconds"] == 0.6
    r = httpx.post(f"{url}/v1/models/{name}/transcribe", files={"audio": ("clip.wav", wav(a, 16000), "audio/wav")},
                   data={"beam": "4"})
    assert r.status_code == 200, r.text
    assert [t["text"] for t in r.json()["transcripts"]] == beam


@pytest.mark.parametrize("audio, message", [
    (b"", "audio 0: empty"),
    (b"not audio at all, just words", "audio 0: not a readable audio file (Format not recognised.)"),  # was
    # "(Error opening <_io.BytesIO object at 0x7f…>: Format not recognised.)"
    (wav(tone(16000, 3.0, 300), 16000), "at most 2 s"),
    (wav(tone(16000, 0.5, 300), 16000)[:-4000], "audio 0: truncated"),
    (wav(tone(16000, 0.01, 300), 16000), "too short"),
])
def test_bad_audio_is_a_400_naming_the_clip(server, audio, message):
    url, _, name = server
    r = httpx.post(f"{url}/v1/models/{name}/transcribe", json={"audio": [base64.b64encode(audio).decode()]})
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_request_shape_errors(server):
    url, _, name = server
    ok = base64.b64encode(wav(tone(16000, 0.5, 300), 16000)).decode()
    for body, message in (({"audio": [ok] * 3}, "at most 2"), ({"audio": ["%%%"]}, "not valid base64"),
                          ({"audio": [ok], "beam": 0}, "beam"), ({"audio": []}, "audio"),
                          ({"audio": [ok], "lm": "/etc/passwd"}, "lm")):  # no field is ever a path
        r = httpx.post(f"{url}/v1/models/{name}/transcribe", json=body)
        assert r.status_code == 400 and message in r.json()["error"], (body, r.text)
    r = httpx.post(f"{url}/v1/models/{name}/transcribe", files={"x": ("a.wav", b"", "audio/wav")}, data={"top_k": "1"})
    assert r.status_code == 400


def test_the_playground_transcribes_an_uploaded_clip(server, tmp_path):
    from tests.serve.test_browser import CHROMIUM, DRIVER
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make setup installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, h, name = server
    clip = tmp_path / "clip.wav"
    sf.write(clip, tone(16000, 0.5, 330), 16000)
    want = h.transcribe(str(clip))[0]["text"] or "(nothing recognised)"
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        d.get(url + "/")
        WebDriverWait(d, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        d.find_element(By.ID, f"audio-{name}").send_keys(str(clip))  # the file picker, as a user picks a file
        out = d.find_element(By.ID, f"transcript-{name}")
        WebDriverWait(d, 20).until(lambda d: out.text != "")
        assert out.text == want
        d.save_screenshot(str(tmp_path / "speech.png"))
    finally:
        d.quit()
