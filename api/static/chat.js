// The web chat: each prompt is a turn that follows its job over the HTTP API's event
// stream (fetch, not EventSource: the key travels in the Authorization header) and shows
// its images. Plain JavaScript, no build step.
"use strict";

const PREFIX = "/api/cv/diffusion";
const KEY_STORE = "diffusion-chat.key";
const SETTINGS_STORE = "diffusion-chat.settings";
const LANGUAGE_STORE = "diffusion-chat.language";
const FIELDS = ["prompt", "negative_prompt", "model", "count", "steps", "guidance", "aspect", "scheduler", "style", "seed"];
const REMEMBERED = FIELDS.filter((name) => name !== "prompt" && name !== "seed");

const STRINGS = {
  en: {
    language: "Language", identity: "Your API key",
    "key-label": "API key (from /apikey create in Discord)", "save-key": "Save", "forget-key": "Forget",
    "key-saved": "Key saved in this browser.", "key-missing": "Enter your API key to start.",
    "prompt-label": "Prompt", "prompt-placeholder": "a red fox in the snow, watercolour",
    "negative-label": "Negative prompt", "negative-placeholder": "blurry, text",
    advanced: "Advanced settings", model: "Model", "model-default": "Default", count: "Images",
    steps: "Steps", guidance: "Guidance", aspect: "Aspect", seed: "Seed", auto: "auto", random: "random",
    generate: "Generate", conversation: "Conversation",
    queued: "Queued: #{position}{eta}", eta: " · about {seconds} s", starting: "Starting…",
    "loading model": "Loading the model…", denoising: "Denoising: step {step} of {total} ({percent}%){eta}",
    decoding: "Decoding…", succeeded: "Done in {seconds} s.", failed: "Failed: {message}",
    canceled: "Cancelled.", cancel: "Cancel", progress: "Progress",
    preview: "Preview of the image being made", download: "Download PNG", upscale: "Upscale",
    vary: "Vary", reroll: "Reroll", remix: "Remix", copy: "Copy settings", copied: "Settings copied.",
    "refine-label": "Change it (“make it night”)", refine: "Refine",
    image: "Image {number} of “{prompt}”", withheld: "Held back by the image check: {count}.",
    "no-key": "Enter your API key first.", network: "The server could not be reached. Try again.",
    share: "Share", "share-link": "Public link", revoke: "Revoke link", revoked: "The link is revoked.",
    compare: "Compare with the previous", "compare-title": "This result and the previous one",
    previous: "Previous", current: "This one", slider: "Slide between them",
    "side-by-side": "Side by side", overlay: "Slider", close: "Close",
    "zoom-title": "Image {number} of {total}", "zoom-hint": "Arrow keys: previous and next image. Esc: close.",
    next: "Next image", back: "Previous image",
    style: "Style", "style-none": "None", favourite: "☆ Favourite", favourited: "★ Favourite",
    gallery: "Gallery: history and favourites", history: "History", favorites: "Favourites",
    search: "Search", "all-models": "All models", more: "More", suggestions: "Suggestions",
    found: "{count} jobs.", nothing: "Nothing here yet.",
    scheduler: "Sampler", "zoom-out": "Zoom out", pan: "Pan {side}",
    good: "👍 Good", poor: "👎 Poor", dashboard: "Operator dashboard", period: "Period",
    day: "Today", week: "Last 7 days", month: "Last 30 days", chart: "Generations a day and the p95 time from request to result",
    "f-jobs": "Generations", "f-images": "Images", "f-users": "Active people",
    "f-wait": "Queue wait, median / p95", "f-generation": "Generation, median / p95",
    "f-errors": "Error rate", "f-cancels": "Cancel rate", "f-favourited": "Saved to favourites",
    "f-feedback": "👍 / 👎", "f-models": "Feedback per model",
    left: "left", right: "right", top: "up", bottom: "down",
    "discord-login": "Log in with Discord", "logged-in": "Logged in with Discord.",
    "login-denied": "Discord login was cancelled.", "login-state": "That login link expired. Try again.",
    "login-discord": "Discord could not confirm who you are. Try again.",
  },
  ko: {
    language: "언어", identity: "API 키",
    "key-label": "API 키 (Discord에서 /apikey create)", "save-key": "저장", "forget-key": "지우기",
    "key-saved": "이 브라우저에 키를 저장했습니다.", "key-missing": "시작하려면 API 키를 입력하세요.",
    "prompt-label": "프롬프트", "prompt-placeholder": "눈 속의 붉은 여우, 수채화",
    "negative-label": "네거티브 프롬프트", "negative-placeholder": "흐림, 글자",
    advanced: "고급 설정", model: "모델", "model-default": "기본값", count: "이미지 수",
    steps: "스텝", guidance: "가이던스", aspect: "비율", seed: "시드", auto: "자동", random: "무작위",
    generate: "생성", conversation: "대화",
    queued: "대기 중: {position}번째{eta}", eta: " · 약 {seconds}초", starting: "시작하는 중…",
    "loading model": "모델을 불러오는 중…", denoising: "노이즈 제거: {total}스텝 중 {step} ({percent}%){eta}",
    decoding: "디코딩 중…", succeeded: "{seconds}초 만에 완료.", failed: "실패: {message}",
    canceled: "취소됨.", cancel: "취소", progress: "진행률",
    preview: "만들고 있는 이미지 미리보기", download: "PNG 다운로드", upscale: "업스케일",
    vary: "변형", reroll: "다시 생성", remix: "리믹스", copy: "설정 복사", copied: "설정을 복사했습니다.",
    "refine-label": "바꾸기 (“밤으로 바꿔줘”)", refine: "다듬기",
    image: "“{prompt}”의 이미지 {number}", withheld: "이미지 검사로 보류됨: {count}개.",
    "no-key": "먼저 API 키를 입력하세요.", network: "서버에 연결할 수 없습니다. 다시 시도하세요.",
    share: "공유", "share-link": "공개 링크", revoke: "링크 취소", revoked: "링크를 취소했습니다.",
    compare: "이전 결과와 비교", "compare-title": "이번 결과와 이전 결과",
    previous: "이전", current: "이번", slider: "밀어서 비교",
    "side-by-side": "나란히", overlay: "슬라이더", close: "닫기",
    "zoom-title": "이미지 {number} / {total}", "zoom-hint": "화살표 키: 이전/다음 이미지. Esc: 닫기.",
    next: "다음 이미지", back: "이전 이미지",
    style: "스타일", "style-none": "없음", favourite: "☆ 즐겨찾기", favourited: "★ 즐겨찾기",
    gallery: "갤러리: 기록과 즐겨찾기", history: "기록", favorites: "즐겨찾기",
    search: "검색", "all-models": "모든 모델", more: "더 보기", suggestions: "추천",
    found: "작업 {count}개.", nothing: "아직 아무것도 없습니다.",
    scheduler: "샘플러", "zoom-out": "축소", pan: "{side}로 확장",
    good: "👍 좋아요", poor: "👎 별로예요", dashboard: "운영자 대시보드", period: "기간",
    day: "오늘", week: "최근 7일", month: "최근 30일", chart: "하루 생성 수와 요청부터 결과까지의 p95 시간",
    "f-jobs": "생성", "f-images": "이미지", "f-users": "활동한 사람",
    "f-wait": "대기 시간, 중앙값 / p95", "f-generation": "생성 시간, 중앙값 / p95",
    "f-errors": "오류율", "f-cancels": "취소율", "f-favourited": "즐겨찾기에 저장",
    "f-feedback": "👍 / 👎", "f-models": "모델별 평가",
    left: "왼쪽", right: "오른쪽", top: "위", bottom: "아래",
    "discord-login": "Discord로 로그인", "logged-in": "Discord로 로그인했습니다.",
    "login-denied": "Discord 로그인이 취소되었습니다.", "login-state": "로그인 링크가 만료되었습니다. 다시 시도하세요.",
    "login-discord": "Discord에서 본인 확인을 하지 못했습니다. 다시 시도하세요.",
  },
};

let language = "en";
const base = (document.querySelector('meta[name="api-base"]')?.content || "").replace(/\/$/, "");

function t(key, values = {}) {
  const text = (STRINGS[language] && STRINGS[language][key]) || STRINGS.en[key] || key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

function applyLanguage(chosen) {
  language = STRINGS[chosen] ? chosen : "en";
  document.documentElement.lang = language;
  document.getElementById("language").value = language;
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  for (const node of document.querySelectorAll("[data-i18n-placeholder]")) {
    node.placeholder = t(node.dataset.i18nPlaceholder);
  }
  document.getElementById("turns").setAttribute("aria-label", t("conversation"));
  document.getElementById("suggestions").setAttribute("aria-label", t("suggestions"));
}

function key() { return localStorage.getItem(KEY_STORE) || ""; }

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(message, field) { super(message); this.field = field; }
}

async function api(path, options = {}) {
  if (!key()) throw new ApiError(t("no-key"), "key");
  const url = path.startsWith("http") ? path : `${base}${PREFIX}${path}`;
  let response;
  try {
    response = await fetch(url, {
      ...options,
      headers: { Authorization: `Bearer ${key()}`, "Content-Type": "application/json", ...(options.headers || {}) },
    });
  } catch {
    throw new ApiError(t("network"));
  }
  if (!response.ok) {
    let error = { message: `HTTP ${response.status}` };
    try { error = (await response.json()).error || error; } catch { /* not JSON */ }
    throw new ApiError(error.message, error.field);
  }
  return response;
}

async function apiJson(path, body) {
  const options = body === undefined ? {} : { method: "POST", body: JSON.stringify(body) };
  return (await api(path, options)).json();
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function formBody() {
  const form = document.getElementById("prompt-form");
  const body = {};
  for (const name of FIELDS) {
    const field = form.elements[name];
    const value = field.value.trim();
    if (value === "") continue;
    body[name] = field.type === "number" ? Number(value) : value;
  }
  return body;
}

function fillForm(body) {
  const form = document.getElementById("prompt-form");
  for (const name of FIELDS) {
    if (form.elements[name]) form.elements[name].value = body[name] ?? "";
  }
}

function rememberSettings(body) {
  const kept = Object.fromEntries(REMEMBERED.filter((n) => n in body).map((n) => [n, body[n]]));
  localStorage.setItem(SETTINGS_STORE, JSON.stringify(kept));
}

// --- a turn ---------------------------------------------------------------------------------

class Turn {
  constructor(body) {
    this.body = body;
    this.status = element("p", { class: "status", role: "status" });
    this.bar = element("progress", { max: "100", value: "0", "aria-label": t("progress") });
    this.preview = element("img", { class: "preview", alt: t("preview"), hidden: "" });
    this.cancel = element("button", { type: "button", class: "secondary cancel", text: t("cancel"), onclick: () => this.cancelJob() });
    this.images = element("div", { class: "images" });
    this.actions = element("div", { class: "actions" });
    this.node = element(
      "li", { class: "turn" },
      element("p", { class: "turn-prompt", text: body.prompt }),
      this.status, this.bar, this.preview, this.cancel, this.images, this.actions,
    );
    document.getElementById("turns").append(this.node);
    this.node.scrollIntoView({ block: "nearest" });
    Turn.all.push(this);
  }

  static all = [];

  async start(request) {
    try {
      this.job = await request;
      this.node.dataset.job = this.job.id;
      await this.follow();
    } catch (error) {
      this.fail(error.message);
    }
  }

  async follow() {
    const response = await api(this.job.urls.events, { headers: { Accept: "text/event-stream" } });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const name = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (name && data) await this.on(name, JSON.parse(data));
      }
    }
  }

  async on(name, data) {
    const eta = data.eta_s ? t("eta", { seconds: Math.ceil(data.eta_s) }) : "";
    if (name === "queued") this.say(t("queued", { position: data.position, eta }));
    else if (name === "loading") this.say(t("loading model"));
    else if (name === "started") this.say(t("starting"));
    else if (name === "progress") {
      this.bar.value = data.percent;
      this.say(data.stage === "decoding" ? t("decoding") : t("denoising", { ...data, eta }));
      if (data.preview) { this.preview.src = data.preview; this.preview.hidden = false; }
    } else if (["succeeded", "failed", "canceled"].includes(name)) await this.finish(data);
  }

  say(text) { this.status.textContent = text; this.node.dataset.state = "running"; }

  fail(message) {
    this.status.textContent = t("failed", { message });
    this.node.dataset.state = "failed";
    this.cancel.remove();
  }

  async cancelJob() {
    this.cancel.disabled = true;
    try { await api(this.job.urls.cancel, { method: "POST" }); } catch (error) { showError(error.message); }
  }

  async finish(job) {
    this.job = job;
    this.cancel.remove();
    this.preview.hidden = true;
    if (job.status === "failed") return this.fail(job.error || "");
    if (job.status === "canceled") {
      this.status.textContent = t("canceled");
      this.node.dataset.state = "canceled";
      return;
    }
    this.bar.value = 100;
    const seconds = job.metrics?.total_s ? job.metrics.total_s.toFixed(1) : "?";
    this.status.textContent = t("succeeded", { seconds });
    if (job.withheld) this.status.textContent += " " + t("withheld", { count: job.withheld.length });
    const urls = job.image_routes || job.output || []; // our routes: output may point at S3
    for (const [index, url] of urls.entries()) await this.addImage(url, index);
    const previous = Turn.all[Turn.all.indexOf(this) - 1];
    if (urls.length) {
      const votes = ["up", "down"].map((vote) => element("button", {
        type: "button", class: "secondary vote", "aria-pressed": "false", "data-vote": vote,
        text: t(vote === "up" ? "good" : "poor"),
        onclick: async () => {
          try {
            const state = await apiJson(`/jobs/${this.job.id}/feedback`, { vote });
            for (const button of votes) button.setAttribute("aria-pressed", String(button.dataset.vote === state.vote));
          } catch (error) { showError(error.message); }
        },
      }));
      this.actions.append(...votes,
        element("button", { type: "button", class: "secondary", text: t("share"), onclick: () => this.share() }));
    }
    if (urls.length && previous?.firstImage) {
      this.actions.append(element("button", { type: "button", class: "secondary", text: t("compare"), onclick: () => compare(previous.firstImage, this.firstImage) }));
    }
    this.actions.append(
      element("button", { type: "button", class: "secondary", text: t("reroll"), onclick: () => submit({ ...this.body, seed: undefined }) }),
      element("button", { type: "button", class: "secondary", text: t("remix"), onclick: () => this.remix() }),
      element("button", { type: "button", class: "secondary", text: t("copy"), onclick: () => this.copySettings() }),
    );
    if (urls.length) this.node.append(this.refineForm());
    this.node.dataset.state = "done";
  }

  async addImage(url, index) {
    const blob = await (await api(url)).blob();
    const source = URL.createObjectURL(blob);
    const label = t("image", { number: index + 1, prompt: this.body.prompt });
    const picture = element("img", { src: source, alt: label, tabindex: "0", class: "zoomable" });
    picture.addEventListener("click", () => zoom(picture));
    picture.addEventListener("keydown", (event) => { if (event.key === "Enter") zoom(picture); });
    this.firstImage = this.firstImage || picture;
    const name = `diffusion-chat-${this.job.id}-${index + 1}.png`;
    this.images.append(element(
      "figure", {}, picture,
      element("figcaption", {},
        element("a", { href: source, download: name, class: "download", text: t("download") }),
        element("button", { type: "button", class: "secondary", text: t("upscale"), onclick: () => this.derive(blob, "upscale") }),
        element("button", { type: "button", class: "secondary", text: t("vary"), onclick: () => this.derive(blob, "variation") }),
        favouriteButton(url),
        element("button", { type: "button", class: "secondary", text: t("zoom-out"), onclick: () => this.derive(blob, "outpaint", { outpaint_pixels: Math.min(1024, Math.round(picture.naturalWidth / 2)) }) }),
        ...["left", "right", "top", "bottom"].map((side) => element("button", {
          type: "button", class: "secondary", text: t("pan", { side: t(side) }),
          onclick: () => this.derive(blob, "outpaint", { outpaint_sides: [side], outpaint_pixels: Math.min(1024, Math.round(picture.naturalWidth / 4)) }),
        })),
      ),
    ));
  }

  async derive(blob, operation, extra = {}) {
    const image = await new Promise((resolve) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result));
      reader.readAsDataURL(blob);
    });
    const body = { prompt: this.body.prompt, negative_prompt: this.body.negative_prompt, model: this.job.input.model, operation, init_image: image };
    if (operation === "variation") body.variation = "subtle";
    Object.assign(body, extra);
    submit(body, { remember: false });
  }

  async share() {
    try {
      const link = await apiJson(`/jobs/${this.job.id}/share`, {});
      this.node.querySelector(".share")?.remove();
      const id = `share-${this.job.id}`;
      const box = element("div", { class: "share" },
        element("label", { for: id, text: t("share-link") }),
        element("input", { id, readonly: "", value: link.url }),
        element("a", { href: link.url, target: "_blank", rel: "noopener", text: link.url.replace(/^https?:\/\//, "") }),
        element("button", { type: "button", class: "secondary", text: t("revoke"), onclick: async () => {
          await apiJson(`/jobs/${this.job.id}/unshare`, {});
          box.replaceChildren(element("p", { text: t("revoked") }));
        } }),
      );
      this.node.append(box);
    } catch (error) {
      showError(error.message);
    }
  }

  remix() {
    fillForm(this.body);
    document.getElementById("prompt").focus();
  }

  async copySettings() {
    const text = JSON.stringify({ ...this.body, seed: this.job.input.seed });
    try {
      await navigator.clipboard.writeText(text);
      this.status.textContent = t("copied");
    } catch {
      window.prompt(t("copy"), text);
    }
  }

  refineForm() {
    const id = `refine-${this.job.id}`;
    const input = element("input", { id, maxlength: "300", required: "" });
    return element(
      "form", {
        class: "refine",
        onsubmit: (event) => {
          event.preventDefault();
          const instruction = input.value.trim();
          if (!instruction) return;
          const turn = new Turn({ ...this.body, prompt: `${this.body.prompt} → ${instruction}` });
          turn.start(apiJson("/refine", { parent_id: this.job.id, instruction, image: 0 }));
          input.value = "";
        },
      },
      element("label", { for: id, text: t("refine-label") }), input,
      element("button", { type: "submit", text: t("refine") }),
    );
  }
}

// --- favourites, the gallery, suggestions and styles -------------------------------------

function favouriteButton(url, starred = false) {
  const button = element("button", { type: "button", class: "secondary favourite", "aria-pressed": String(starred), text: t(starred ? "favourited" : "favourite") });
  button.addEventListener("click", async () => {
    const on = button.getAttribute("aria-pressed") !== "true";
    try {
      await api(url.replace(/\.png$/, "/favorite"), { method: on ? "PUT" : "DELETE" });
      button.setAttribute("aria-pressed", String(on));
      button.textContent = t(on ? "favourited" : "favourite");
    } catch (error) {
      showError(error.message);
    }
  });
  return button;
}

const gallery = { scope: "history", page: 0 };

async function loadGallery(more = false) {
  gallery.page = more ? gallery.page + 1 : 0;
  const items = document.getElementById("gallery-items");
  if (!more) items.replaceChildren();
  const query = new URLSearchParams({ page: String(gallery.page) });
  const q = document.getElementById("gallery-q").value.trim();
  const model = document.getElementById("gallery-model").value;
  if (q) query.set("q", q);
  if (model) query.set("model", model);
  try {
    const found = await apiJson(`/${gallery.scope}?${query}`);
    document.getElementById("gallery-status").textContent = found.total ? t("found", { count: found.total }) : t("nothing");
    for (const job of found.items) {
      for (const [index, url] of (job.image_routes || job.output || []).entries()) {
        const blob = await (await api(url.replace(/\.png$/, "/thumb.webp"))).blob();
        const label = t("image", { number: index + 1, prompt: job.input.prompt });
        const picture = element("img", { src: URL.createObjectURL(blob), alt: label, tabindex: "0", class: "zoomable" });
        picture.addEventListener("click", () => zoom(picture));
        items.append(element("figure", { "data-job": job.id }, picture,
          element("figcaption", {}, element("span", { class: "caption", text: job.input.prompt }),
            favouriteButton(url, gallery.scope === "favorites"))));
      }
    }
    document.getElementById("gallery-more").hidden = found.page + 1 >= found.pages;
  } catch (error) {
    showError(error.message);
  }
}

function chooseScope(scope) {
  gallery.scope = scope;
  for (const [id, name] of [["tab-history", "history"], ["tab-favorites", "favorites"]]) {
    document.getElementById(id).setAttribute("aria-pressed", String(name === scope));
  }
  loadGallery();
}

let suggestTimer = 0;

function suggest() {
  clearTimeout(suggestTimer);
  suggestTimer = setTimeout(async () => {
    const list = document.getElementById("suggestions");
    const typed = document.getElementById("prompt").value.trim();
    if (typed.length < 2 || !key()) { list.hidden = true; return; }
    try {
      const found = await apiJson(`/prompts/suggestions?${new URLSearchParams({ q: typed })}`);
      const prompts = [...new Set([...found.mine, ...found.popular])].filter((p) => p !== typed);
      list.replaceChildren(...prompts.map((prompt) => element("li", { role: "option" },
        element("button", { type: "button", class: "secondary", text: prompt, onclick: () => {
          document.getElementById("prompt").value = prompt;
          list.hidden = true;
          document.getElementById("prompt").focus();
        } }))));
      list.hidden = prompts.length === 0;
    } catch { list.hidden = true; }
  }, 200);
}

async function loadStyles() {
  try {
    const select = document.getElementById("style");
    const chosen = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}").style || select.value;
    for (const style of await apiJson("/styles")) {
      if (![...select.options].some((o) => o.value === style.name)) {
        select.append(element("option", { value: style.name, text: style.name, title: style.template }));
      }
    }
    select.value = chosen;
  } catch (error) {
    showError(error.message);
  }
}

// --- the operator dashboard (operator keys only) ---------------------------------------------

function seconds(value) { return value == null ? "—" : `${value.toFixed(1)} s`; }
function share(value) { return `${(100 * (value || 0)).toFixed(1)}%`; }

async function loadDashboard() {
  const period = document.getElementById("dashboard-period").value;
  let response;
  try {
    response = await api(`/admin/usage?period=${period}`);
  } catch {
    document.getElementById("dashboard").hidden = true;  // not an operator's key
    return;
  }
  const { summary } = await response.json();
  document.getElementById("dashboard").hidden = false;
  const rows = [
    ["f-jobs", summary.jobs], ["f-images", summary.images], ["f-users", summary.active_users],
    ["f-wait", `${seconds(summary.wait_p50_s)} / ${seconds(summary.wait_p95_s)}`],
    ["f-generation", `${seconds(summary.generation_p50_s)} / ${seconds(summary.generation_p95_s)}`],
    ["f-errors", share(summary.error_rate)], ["f-cancels", share(summary.cancel_rate)],
    ["f-favourited", share(summary.favourited_share)],
    ["f-feedback", `${summary.thumbs_up} / ${summary.thumbs_down}`],
    ["f-models", Object.entries(summary.feedback_by_model).map(([m, c]) => `${m}: ${c.up} / ${c.down}`).join(", ") || "—"],
  ];
  document.getElementById("dashboard-figures").replaceChildren(...rows.flatMap(([name, value]) => [
    element("dt", { text: t(name) }), element("dd", { text: String(value), "data-figure": name }),
  ]));
  const chart = document.getElementById("dashboard-chart");
  chart.src = URL.createObjectURL(await (await api(`/admin/usage/chart.png?period=${period}`)).blob());
  chart.alt = t("chart");
  chart.hidden = false;
}

// --- zoom and compare -------------------------------------------------------------------------

function dialog(title, ...content) {
  document.getElementById("viewer")?.remove();
  const heading = element("h2", { id: "viewer-title", text: title });
  const close = element("button", { type: "button", class: "secondary", text: t("close"), onclick: () => box.close() });
  const box = element("dialog", { id: "viewer", "aria-labelledby": "viewer-title" }, heading, ...content, close);
  box.addEventListener("close", () => box.remove());
  document.body.append(box);
  box.showModal();
  return box;
}

function zoom(picture) {
  const pictures = [...document.querySelectorAll("img.zoomable")];
  let index = pictures.indexOf(picture);
  const big = element("img", { class: "zoomed" });
  const hint = element("p", { class: "hint", text: t("zoom-hint") });
  const box = dialog("", big, hint,
    element("button", { type: "button", class: "secondary", text: t("back"), onclick: () => show(index - 1) }),
    element("button", { type: "button", class: "secondary", text: t("next"), onclick: () => show(index + 1) }),
  );
  function show(at) {
    index = (at + pictures.length) % pictures.length;
    big.src = pictures[index].src;
    big.alt = pictures[index].alt;
    box.querySelector("h2").textContent = t("zoom-title", { number: index + 1, total: pictures.length });
  }
  box.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight") show(index + 1);
    else if (event.key === "ArrowLeft") show(index - 1);
  });
  show(index);
}

function compare(before, after) {
  const left = element("figure", {}, element("img", { src: before.src, alt: before.alt }), element("figcaption", { text: t("previous") }));
  const right = element("figure", {}, element("img", { src: after.src, alt: after.alt }), element("figcaption", { text: t("current") }));
  const sideBySide = element("div", { class: "side-by-side" }, left, right);
  const top = element("img", { src: after.src, alt: after.alt, class: "top" });
  const stack = element("div", { class: "stack" }, element("img", { src: before.src, alt: before.alt }), top);
  const slider = element("input", { type: "range", min: "0", max: "100", value: "50", id: "compare-slider" });
  const reveal = () => { top.style.clipPath = `inset(0 0 0 ${slider.value}%)`; };
  slider.addEventListener("input", reveal);
  reveal();
  const overlay = element("div", { class: "overlay", hidden: "" }, stack,
    element("label", { for: "compare-slider", text: t("slider") }), slider);
  const toggle = element("button", { type: "button", class: "secondary", text: t("overlay"), onclick: () => {
    const showingSlider = sideBySide.hidden;
    sideBySide.hidden = !showingSlider;
    overlay.hidden = showingSlider;
    toggle.textContent = showingSlider ? t("overlay") : t("side-by-side");
  } });
  dialog(t("compare-title"), toggle, sideBySide, overlay);
}

function submit(body, { remember = true } = {}) {
  showError("");
  const clean = Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined && v !== ""));
  if (remember) rememberSettings(clean);
  const turn = new Turn(clean);
  turn.start(apiJson("/generate", clean).catch((error) => {
    showError(error.field ? `${error.field}: ${error.message}` : error.message);
    throw error;
  }));
  return turn;
}

async function loadModels() {
  try {
    const models = await apiJson("/models");
    for (const id of ["model", "gallery-model"]) {
      const select = document.getElementById(id);
      const chosen = id === "model" ? JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}").model || select.value : select.value;
      for (const model of models) {
        if (![...select.options].some((o) => o.value === model.name)) {
          select.append(element("option", { value: model.name, text: model.name }));
        }
      }
      select.value = chosen;
    }
  } catch (error) {
    showError(error.message);
  }
}

function showKeyState() {
  const status = document.getElementById("key-status");
  status.textContent = !key() ? t("key-missing") : status.dataset.login ? t("logged-in") : t("key-saved");
}

function takeLogin() {
  // "Log in with Discord" comes back with the key (or the reason) in the fragment.
  const answer = new URLSearchParams(location.hash.slice(1));
  if (!answer.has("key") && !answer.has("login-error")) return;
  history.replaceState(null, "", location.pathname);
  if (answer.get("key")) {
    localStorage.setItem(KEY_STORE, answer.get("key"));
    document.getElementById("key-status").dataset.login = "yes";
  } else {
    showError(t(`login-${answer.get("login-error")}`));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const stored = localStorage.getItem(LANGUAGE_STORE);
  applyLanguage(stored || (navigator.language || "en").toLowerCase().split("-")[0]);
  document.getElementById("language").addEventListener("change", (event) => {
    localStorage.setItem(LANGUAGE_STORE, event.target.value);
    applyLanguage(event.target.value);
    showKeyState();
  });
  try { fillForm(JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}")); } catch { /* ignore */ }
  document.getElementById("discord-login").hidden =
    document.querySelector('meta[name="discord-login"]')?.content !== "on";
  takeLogin();
  showKeyState();
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORE, document.getElementById("key").value.trim());
    document.getElementById("key").value = "";
    showKeyState();
    loadModels();
    loadStyles();
    loadDashboard();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORE);
    showKeyState();
  });
  document.getElementById("prompt-form").addEventListener("submit", (event) => {
    event.preventDefault();
    submit(formBody());
  });
  document.getElementById("prompt").addEventListener("input", suggest);
  document.getElementById("gallery").addEventListener("toggle", (event) => { if (event.target.open) loadGallery(); });
  document.getElementById("tab-history").addEventListener("click", () => chooseScope("history"));
  document.getElementById("tab-favorites").addEventListener("click", () => chooseScope("favorites"));
  document.getElementById("gallery-more").addEventListener("click", () => loadGallery(true));
  document.getElementById("gallery-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadGallery();
  });
  document.getElementById("dashboard").addEventListener("toggle", (event) => { if (event.target.open) loadDashboard(); });
  document.getElementById("dashboard-period").addEventListener("change", loadDashboard);
  if (key()) { loadModels(); loadStyles(); loadDashboard(); }
});
