// The audio output: a small jitter buffer of decoded PCM chunks played in order. It reports
// the PTS of the sample it is playing (with the context time), which is the page's master
// clock: video frames are drawn when the audio reaches their PTS.

const START_MS = 60;  // buffered before playing starts (again, after an underrun)
const MAX_MS = 250;   // more than this (a burst, a stall caught up) is cut back to TARGET_MS
const TARGET_MS = 100;

class PixelpassAudio extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = [];     // {pts (µs), planes: [Float32Array per channel]}
    this.offset = 0;      // samples of chunks[0] already played
    this.buffered = 0;    // samples queued, not played
    this.playing = false;
    this.lastReport = 0;
    this.port.onmessage = (e) => {
      if (e.data.reset) {
        this.chunks = [];
        this.offset = 0;
        this.buffered = 0;
        this.playing = false;
        return;
      }
      this.chunks.push(e.data);
      this.buffered += e.data.planes[0].length;
      // Stay near live: a backlog would hold the video back with it.
      if (this.buffered <= (MAX_MS * sampleRate) / 1000) return;
      while (this.buffered > (TARGET_MS * sampleRate) / 1000 && this.chunks.length > 1) {
        this.buffered -= this.chunks[0].planes[0].length - this.offset;
        this.chunks.shift();
        this.offset = 0;
      }
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const frames = out[0].length;
    if (!this.playing && this.buffered >= (START_MS * sampleRate) / 1000) this.playing = true;
    let written = 0;
    while (this.playing && written < frames && this.chunks.length) {
      const c = this.chunks[0];
      const n = Math.min(frames - written, c.planes[0].length - this.offset);
      for (let ch = 0; ch < out.length; ch++) {
        const src = c.planes[Math.min(ch, c.planes.length - 1)];
        out[ch].set(src.subarray(this.offset, this.offset + n), written);
      }
      if (written === 0 && currentTime - this.lastReport >= 0.05) {
        this.lastReport = currentTime;
        this.port.postMessage({ pts: c.pts + (this.offset / sampleRate) * 1e6, time: currentTime });
      }
      written += n;
      this.offset += n;
      this.buffered -= n;
      if (this.offset >= c.planes[0].length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
    if (written < frames) {
      for (const ch of out) ch.fill(0, written);
      if (this.playing && !this.chunks.length) {
        this.playing = false;
        this.port.postMessage({ underrun: true });
      }
    }
    return true;
  }
}

registerProcessor('pixelpass-audio', PixelpassAudio);
