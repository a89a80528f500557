// The pixelpass browser viewer: takes the ticket from the URL fragment (#pp1…, never sent to
// any server) or the paste box, runs the wasm viewer (iroh through the ticket's relay,
// MPEG-TS demux), decodes with WebCodecs and plays: video to a canvas, audio through an
// AudioWorklet whose clock paces the video.
//
// `?report=/path` (same origin only) POSTs the page's counters there as JSON twice a second:
// how the tests read what the page did.

import init, { Viewer, checkTicket } from './pkg/pixelpass_web.js';

const $ = (id) => document.getElementById(id);

// What the page did, for people (status line) and tests (report).
const state = {
  status: 'starting',
  message: '',
  ended: null,
  connected: false,
  framesDecoded: 0,
  framesDrawn: 0,
  keyframesDecoded: 0,
  audioFramesDecoded: 0,
  decoderErrors: [],
  keyframeRequests: 0,
  firstUnitKey: null,
  width: 0,
  height: 0,
  codec: '',
  audioCodec: '',
  audioClock: false,
  captureToDecodedMs: [],
  captureToDrawnMs: [],
  stats: null,
  rendition: '',
  renditionChanges: 0,
  ceilingKbps: 0,
  canvasNonBlank: false,
};
window.pixelpass = state;

let viewer = null;

function showMessage(text) {
  state.message = text;
  $('message').textContent = text;
  $('message').hidden = !text;
}

function setStatus(text) {
  state.status = text;
  $('status').textContent = text;
}

// ---- audio: AudioDecoder → AudioWorklet (the master clock) ---------------------------------

class AudioOut {
  constructor() {
    this.decoder = null;
    this.config = '';
    this.ctx = null;
    this.node = null;
    this.clock = null; // {pts, time}: what the worklet played last, at which context time
    this.pending = [];
  }

  async open(sampleRate) {
    this.ctx = new AudioContext({ sampleRate, latencyHint: 'interactive' });
    await this.ctx.audioWorklet.addModule('audio-worklet.js');
    this.node = new AudioWorkletNode(this.ctx, 'pixelpass-audio', { outputChannelCount: [2] });
    this.node.port.onmessage = (e) => {
      this.clock = e.data.underrun ? null : { pts: e.data.pts, time: e.data.time };
    };
    this.node.connect(this.ctx.destination);
    for (const m of this.pending) this.node.port.postMessage(m.msg, m.transfer);
    this.pending = [];
    const sound = $('sound');
    const update = () => { sound.hidden = this.ctx.state === 'running'; };
    this.ctx.onstatechange = update;
    sound.onclick = () => this.ctx.resume();
    update();
  }

  // The PTS (µs) playing now, when the audio really plays; null otherwise.
  now() {
    if (!this.ctx || this.ctx.state !== 'running' || !this.clock) return null;
    const since = this.ctx.currentTime - this.clock.time;
    if (since > 0.5) return null; // no report lately: the worklet is starved
    return this.clock.pts + since * 1e6;
  }

  push(u) {
    const config = `${u.codec}/${u.sampleRate}/${u.channels}`;
    if (u.discont) this.post({ reset: true });
    if (!this.decoder || this.decoder.state === 'closed' || config !== this.config) {
      this.configure(u, config);
    }
    if (u.pts === undefined) return;
    this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: u.pts, data: u.data }));
  }

  configure(u, config) {
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
    this.config = config;
    state.audioCodec = u.codec;
    this.decoder = new AudioDecoder({
      output: (data) => this.output(data),
      error: (e) => state.decoderErrors.push(`audio: ${e.message}`),
    });
    this.decoder.configure({ codec: u.codec, sampleRate: u.sampleRate, numberOfChannels: u.channels });
    if (!this.ctx) this.open(u.sampleRate).catch((e) => state.decoderErrors.push(`audio output: ${e.message}`));
  }

  output(data) {
    state.audioFramesDecoded++;
    const planes = [];
    for (let ch = 0; ch < data.numberOfChannels; ch++) {
      const plane = new Float32Array(data.numberOfFrames);
      data.copyTo(plane, { planeIndex: ch, format: 'f32-planar' });
      planes.push(plane);
    }
    this.post({ pts: data.timestamp, planes }, planes.map((p) => p.buffer));
    data.close();
  }

  post(msg, transfer = []) {
    if (this.node) this.node.port.postMessage(msg, transfer);
    else if (!msg.reset) this.pending.push({ msg, transfer });
    else this.pending = [];
  }
}

// ---- video: VideoDecoder (Annex B) → frames paced by the audio clock → canvas --------------

const MAX_AUDIO_WAIT = 300000; // µs

class VideoOut {
  constructor(canvas, audio) {
    this.canvas = canvas;
    this.ctx2d = canvas.getContext('2d');
    this.audio = audio;
    this.decoder = null;
    this.codec = '';
    this.waitKey = true;
    this.queue = [];
    this.captures = new Map(); // pts → capture time (ms since the epoch)
    setInterval(() => this.render(), 8);
  }

  push(u) {
    state.firstUnitKey ??= u.key; // a share starts at a keyframe for every viewer
    if (u.discont) this.waitKey = true;
    if (this.waitKey && !u.key) return; // a decoder starts at a keyframe
    if (u.key && u.codec && (this.waitKey || !this.usable() || u.codec !== this.codec)) {
      this.configure(u.codec);
    }
    if (!this.usable()) return;
    if (this.decoder.decodeQueueSize > 60) {
      this.waitKey = true; // decoding cannot keep up: catch up at the next keyframe
      return;
    }
    this.waitKey = false;
    if (u.capture !== undefined) this.captures.set(u.pts, u.capture);
    try {
      this.decoder.decode(new EncodedVideoChunk({ type: u.key ? 'key' : 'delta', timestamp: u.pts ?? 0, data: u.data }));
    } catch (e) {
      // refused at once (a chunk the decoder cannot take now): as a decoding error
      if (this.decoder.state !== 'closed') this.decoder.close();
      this.failed(e);
      return;
    }
    if (u.key) state.keyframesDecoded++;
  }

  usable() {
    return this.decoder && this.decoder.state === 'configured';
  }

  configure(codec) {
    if (!this.decoder || this.decoder.state === 'closed') {
      this.decoder = new VideoDecoder({ output: (f) => this.output(f), error: (e) => this.failed(e) });
    }
    this.codec = codec;
    state.codec = codec;
    // No description: the access units are Annex B with SPS/PPS in band.
    this.decoder.configure({ codec, optimizeForLatency: true });
  }

  // A decoding error closes the decoder: wait for a keyframe (asked of the host at once,
  // rather than at the next GOP) and start a new one there.
  failed(e) {
    state.decoderErrors.push(`video: ${e.message}`);
    this.waitKey = true;
    state.keyframeRequests++;
    if (viewer) viewer.requestKeyframe();
  }

  output(frame) {
    state.framesDecoded++;
    const capture = this.captures.get(frame.timestamp);
    this.captures.delete(frame.timestamp);
    if (capture !== undefined) sample(state.captureToDecodedMs, Date.now() - capture);
    if (this.captures.size > 300) this.captures.clear();
    this.queue.push({ frame, capture });
    this.render();
  }

  // Draws the frame due now: by the audio clock when sound plays, else at once (lowest
  // latency). Frames that are late by then are skipped. A frame waits for the audio at most
  // MAX_AUDIO_WAIT: when the sound comes out later than that (a slow audio path), the
  // picture stays near live and leads the sound.
  render() {
    const clock = this.audio.now();
    state.audioClock = clock !== null;
    let next = null;
    while (this.queue.length) {
      const f = this.queue[0].frame;
      const early = clock === null ? 0 : f.timestamp - clock;
      if (early > 10000 && early < MAX_AUDIO_WAIT && this.queue.length < 30) break; // not yet
      if (next) next.frame.close();
      next = this.queue.shift();
    }
    if (!next) return;
    const due = next.frame;
    if (next.capture !== undefined) sample(state.captureToDrawnMs, Date.now() - next.capture);
    if (this.canvas.width !== due.displayWidth || this.canvas.height !== due.displayHeight) {
      this.canvas.width = due.displayWidth;
      this.canvas.height = due.displayHeight;
    }
    state.width = due.displayWidth;
    state.height = due.displayHeight;
    this.ctx2d.drawImage(due, 0, 0);
    due.close();
    state.framesDrawn++;
  }

  // Whether the canvas shows something other than one flat colour (a test pattern's small
  // ball on black counts, so every pixel is looked at).
  nonBlank() {
    if (!state.framesDrawn) return false;
    const px = this.ctx2d.getImageData(0, 0, this.canvas.width, this.canvas.height).data;
    for (let i = 4; i < px.length; i += 4) {
      if (Math.abs(px[i] - px[0]) + Math.abs(px[i + 1] - px[1]) + Math.abs(px[i + 2] - px[2]) > 30) return true;
    }
    return false;
  }
}

// Keeps the last 600 latency samples.
function sample(list, ms) {
  list.push(ms);
  if (list.length > 600) list.shift();
}

// ---- quality ceiling ------------------------------------------------------------------------

// The viewer's ceiling (kbit/s of video, 0: none), remembered across shares: someone on a
// metered connection wants it every time.
const CEILING_KEY = 'pixelpass.ceilingKbps';

function savedCeiling() {
  try {
    return Math.max(0, parseInt(localStorage.getItem(CEILING_KEY), 10) || 0);
  } catch {
    return 0; // storage blocked: no ceiling
  }
}

// Fills the quality menu with the host's renditions (top first) once connected; a share of
// one rendition has nothing to choose. Picking one asks the host for at most its bitrate.
function offerQuality(names, kbps) {
  const menu = $('quality');
  menu.replaceChildren(new Option('Auto quality', '0'));
  names.forEach((name, i) => {
    menu.add(new Option(`Up to ${name} (${(kbps[i] / 1000).toFixed(1)} Mbit/s)`, String(kbps[i])));
  });
  // the highest rendition within the saved ceiling (the host applies the same rule)
  const saved = state.ceilingKbps;
  const within = kbps.find((k) => k <= saved) ?? kbps[kbps.length - 1];
  menu.value = saved > 0 && within !== undefined ? String(within) : '0';
  menu.hidden = names.length < 2;
  menu.onchange = () => {
    const k = parseInt(menu.value, 10) || 0;
    state.ceilingKbps = k;
    viewer?.setCeiling(k);
    try {
      localStorage.setItem(CEILING_KEY, String(k));
    } catch {
      // storage blocked: the choice lasts this page
    }
  };
}

// ---- the share ------------------------------------------------------------------------------

function statusLine(s) {
  const parts = [s.path];
  if (s.rttMs >= 0) parts.push(`${s.rttMs.toFixed(0)} ms RTT`);
  parts.push(`${(s.kbps / 1000).toFixed(1)} Mbit/s`);
  if (s.latencyMs >= 0) parts.push(`${s.latencyMs.toFixed(0)} ms behind capture`);
  if (s.rendition) parts.push(s.rendition);
  if (s.gopsSkipped) parts.push(`${s.gopsSkipped} GOPs skipped`);
  return parts.join(' · ');
}

function watch(ticket) {
  try {
    checkTicket(ticket);
  } catch (e) {
    state.ended = { kind: 'ticket', text: e.message };
    showMessage(e.message);
    $('open').hidden = false;
    return;
  }
  showMessage('');
  $('open').hidden = true;
  $('stage').hidden = false;
  const audio = new AudioOut();
  const video = new VideoOut($('screen'), audio);
  state.nonBlank = () => video.nonBlank();
  const on = {
    status: (d) => setStatus(d.text),
    connected: (d) => {
      state.connected = true;
      offerQuality(d.renditions, d.renditionKbps ?? []);
    },
    video: (d) => video.push(d),
    // Without AudioDecoder (older Safari) the video plays on its own clock, without sound.
    audio: (d) => {
      if ('AudioDecoder' in window) audio.push(d);
      else state.audioCodec ||= 'unsupported';
    },
    rendition: (d) => { state.rendition = d.name; state.renditionChanges++; },
    stats: (d) => { state.stats = d; state.rendition = d.rendition; setStatus(statusLine(d)); },
    ended: (d) => {
      state.ended = d;
      setStatus(d.text);
      if (d.kind !== 'eos') showMessage(d.text);
      if (d.kind === 'crash') console.error(d.text);
    },
  };
  // Leaving the page leaves the share at once (the host frees the seat without waiting for
  // the connection to time out).
  addEventListener('pagehide', () => viewer?.stop());
  // the saved ceiling goes with the hello: the share starts within it
  state.ceilingKbps = savedCeiling();
  viewer = new Viewer(ticket, 'browser', state.ceilingKbps, (type, detail) => {
    try {
      on[type]?.(detail);
    } catch (e) {
      state.decoderErrors.push(`${type}: ${e.message}`);
    }
  });
}

function reportTo(path) {
  if (!path || !path.startsWith('/') || path.startsWith('//')) return; // same origin only
  const send = () => {
    state.canvasNonBlank = state.nonBlank ? state.nonBlank() : false;
    const { nonBlank, ...body } = state;
    fetch(path, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } })
      .catch(() => {});
  };
  setInterval(send, 500);
}

async function main() {
  reportTo(new URLSearchParams(location.search).get('report'));
  if (!('VideoDecoder' in window)) {
    showMessage('This browser has no WebCodecs video decoder: open the link in Chromium, Chrome or Edge (or watch with pixelpass).');
    state.ended = { kind: 'browser', text: state.message };
    return;
  }
  await init();
  $('fullscreen').onclick = () => $('stage').requestFullscreen();
  const fromUrl = decodeURIComponent(location.hash.slice(1));
  $('open').onsubmit = (e) => {
    e.preventDefault();
    const t = $('ticket').value.trim();
    if (!t) return;
    location.hash = t; // a reload watches the same share; the fragment stays in the browser
    location.reload();
  };
  if (fromUrl) watch(fromUrl);
  else $('open').hidden = false;
}

main().catch((e) => {
  showMessage(`The viewer could not start: ${e.message}`);
  state.ended = { kind: 'page', text: state.message };
});
