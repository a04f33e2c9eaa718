// Log in and register. Registration checks the username live (availability + suggestions
// from the server) and the password against the server's policy before anything is sent; the
// server checks both again, and its refusal is shown as it words it.
import { assetUrl } from '../assets.js';
import { debounce, h, replace, uid } from '../dom.js';
import { LANGUAGES, currentLanguage, setLanguage, t } from '../i18n.js';
import { Api } from '../api.js';
import { DEFAULT_POLICY, missing, passwordScore, policyFrom } from '../password.js';
import { errorText } from '../ui.js';

const USERNAME_RE = /^[a-z0-9._=\-/+]+$/;

function field(label, input, hint) {
  const id = input.id || uid('f');
  input.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hint) {
    hint.id = hintId;
    input.setAttribute('aria-describedby', hintId);
  }
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint);
}

function langPicker(rerender) {
  return h('label', { class: 'lang-picker' }, h('span', { class: 'sr-only' }, t('settings.language')),
    h('select', { onchange: async (e) => {
      localStorage.setItem('nexa.lang', e.target.value);
      await setLanguage(e.target.value);
      rerender();
    } }, Object.entries(LANGUAGES).map(([code, name]) => h('option',
      { value: code, selected: code === currentLanguage() }, name))));
}

function frame(title, body, rerender) {
  return h('div', { class: 'auth' },
    h('main', { class: 'auth-card', 'aria-labelledby': 'auth-title' },
      h('div', { class: 'brand' }, h('img', { src: assetUrl('img/icon.svg'), alt: '', class: 'brand-logo' }),
        h('span', { class: 'brand-name' }, 'Nexa')),
      h('h1', { id: 'auth-title' }, title),
      body),
    h('footer', { class: 'auth-foot' }, langPicker(rerender)));
}

export function renderAuth(root, mode, onLoggedIn) {
  const rerender = () => renderAuth(root, mode, onLoggedIn);
  document.title = `${t(mode === 'login' ? 'login.title' : 'register.title')} · Nexa`;
  replace(root, mode === 'login' ? loginView(onLoggedIn, rerender) : registerView(onLoggedIn, rerender));
  root.querySelector('input')?.focus();
}

function loginView(onLoggedIn, rerender) {
  const api = new Api();
  const user = h('input', { name: 'username', autocomplete: 'username', required: true,
    autocapitalize: 'none', spellcheck: 'false' });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password',
    required: true });
  const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, t('login.submit'));
  let cooldown = null;
  const form = h('form', { class: 'form', novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    err.hidden = true;
    if (!user.value.trim() || !pass.value) {
      err.textContent = t('login.missing');
      err.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      onLoggedIn(await api.login(user.value.trim(), pass.value));
    } catch (x) {
      err.textContent = x.errcode === 'M_FORBIDDEN' ? t('login.wrong_password') : errorText(x);
      err.hidden = false;
      if (x.errcode === 'M_LIMIT_EXCEEDED') {
        clearTimeout(cooldown);
        cooldown = setTimeout(() => { submit.disabled = false; }, x.retryAfterMs ?? 1000);
        return;
      }
      pass.select();
    }
    submit.disabled = false;
  } },
  field(t('login.username'), user), field(t('login.password'), pass), err, submit,
  h('p', { class: 'form-alt' }, t('login.no_account'), ' ',
    h('a', { href: '#/register' }, t('login.create_account'))));
  return frame(t('login.title'), form, rerender);
}

function listText(items) {
  try {
    return new Intl.ListFormat(currentLanguage(), { type: 'conjunction' }).format(items);
  } catch {
    return items.join(', ');
  }
}

/** Sentences for the policy: what a password needs, and what this one lacks. */
function policyTexts(policy) {
  const need = {
    length: () => t('register.need_length', { count: policy.minLength }),
    digit: () => t('register.need_digit'),
    lower: () => t('register.need_lower'),
    upper: () => t('register.need_upper'),
    symbol: () => t('register.need_symbol'),
  };
  return {
    hint() {
      const classes = ['digit', 'lower', 'upper', 'symbol'].filter((k) => policy[k]).map((k) => need[k]());
      if (classes.length) {
        return t('register.password_hint_rules', { count: policy.minLength, list: listText(classes) });
      }
      return policy.minLength > 1 ? t('register.password_hint', { count: policy.minLength })
        : t('register.password_hint_free');
    },
    problem(lacking) {
      if (!lacking.length) return null;
      if (lacking[0] === 'common') return t('register.password_common');
      return t('register.password_needs', { list: listText(lacking.map((k) => need[k]())) });
    },
  };
}

function registerView(onLoggedIn, rerender) {
  const api = new Api();
  let policy = DEFAULT_POLICY;
  const user = h('input', { name: 'username', autocomplete: 'username', required: true,
    autocapitalize: 'none', spellcheck: 'false', maxlength: '200' });
  const userHint = h('div', { class: 'hint', 'aria-live': 'polite' }, t('register.username_hint'));
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'new-password',
    required: true, minlength: String(policy.minLength) });
  const meter = h('meter', { min: '0', max: '4', low: '2', high: '3', optimum: '4', value: '0',
    'aria-label': t('register.strength') });
  const strength = h('span', { class: 'strength-label' });
  const passHint = h('div', { class: 'hint' }, h('div', { class: 'strength' }, meter, strength),
    h('span', { class: 'pass-problem', 'aria-live': 'polite' }, policyTexts(policy).hint()));
  const confirm = h('input', { name: 'confirm', type: 'password', autocomplete: 'new-password', required: true });
  const tokenInput = h('input', { name: 'token', autocomplete: 'off' });
  const tokenField = field(t('register.token'), tokenInput);
  tokenField.hidden = true;
  const err = h('p', { class: 'form-error', role: 'alert', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block' }, t('register.submit'));
  let usernameOk = null;
  let seq = 0;

  const showSuggestions = (list) => {
    if (!list?.length) return null;
    return h('div', { class: 'suggestions' }, h('span', {}, t('register.suggestions')), ' ',
      list.map((s) => h('button', { type: 'button', class: 'chip', onclick: () => {
        user.value = s;
        check();
      } }, s)));
  };

  const setUserHint = (kind, text, extra) => {
    userHint.className = `hint hint-${kind}`;
    replace(userHint, text, extra || null);
    user.setAttribute('aria-invalid', kind === 'bad' ? 'true' : 'false');
  };

  const check = debounce(async () => {
    const name = user.value.trim().toLowerCase();
    const mine = ++seq;
    usernameOk = null;
    if (!name) { setUserHint('info', t('register.username_hint')); return; }
    if (!USERNAME_RE.test(name)) {
      setUserHint('bad', t('register.username_chars'));
    } else {
      setUserHint('info', t('register.checking'));
    }
    try {
      const s = await api.usernameSuggestions(user.value.trim());
      if (mine !== seq) return;
      usernameOk = !!(s.valid && s.available);
      if (usernameOk) {
        // The suggestions endpoint is advisory; the spec endpoint is the authority.
        await api.usernameAvailable(name);
        if (mine === seq) setUserHint('good', t('register.available', { name }));
      } else {
        setUserHint('bad', s.valid ? t('register.taken') : (s.error || t('register.username_chars')),
          showSuggestions(s.suggestions));
      }
    } catch (e) {
      if (mine !== seq) return;
      usernameOk = false;
      setUserHint('bad', errorText(e));
    }
  }, 350);

  const updateStrength = () => {
    const score = passwordScore(pass.value, user.value, policy);
    meter.value = score;
    strength.textContent = pass.value ? t(`register.strength_${score}`) : '';
    const texts = policyTexts(policy);
    const problem = pass.value ? texts.problem(missing(pass.value, policy)) : null;
    passHint.querySelector('.pass-problem').textContent = problem || texts.hint();
  };

  // The server's policy decides; until it arrives, the one it ships by default.
  const loadPolicy = () => api.passwordPolicy().then((json) => {
    policy = policyFrom(json);
    pass.setAttribute('minlength', String(policy.minLength));
    updateStrength();
  }).catch(() => {});
  loadPolicy();

  user.addEventListener('input', check);
  pass.addEventListener('input', updateStrength);

  const form = h('form', { class: 'form', novalidate: true, onsubmit: async (e) => {
    e.preventDefault();
    err.hidden = true;
    const name = user.value.trim().toLowerCase();
    let problem = null;
    if (!name || !USERNAME_RE.test(name)) problem = t('register.username_chars');
    else if (usernameOk === false) problem = t('register.taken_or_invalid');
    else if (!pass.value) problem = t('register.password_required');
    else problem = policyTexts(policy).problem(missing(pass.value, policy));
    if (!problem && pass.value !== confirm.value) problem = t('register.mismatch');
    if (problem) {
      err.textContent = problem;
      err.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      onLoggedIn(await api.register(name, pass.value, tokenInput.value.trim() || null));
    } catch (x) {
      if (x.errcode === 'NX_TOKEN_REQUIRED') {
        tokenField.hidden = false;
        tokenInput.focus();
        err.textContent = t('register.token_needed');
      } else if (x.errcode === 'M_WEAK_PASSWORD') {
        // The server's own words (its policy may have changed since this page loaded).
        err.textContent = x.data?.error ? t('register.server_refused', { detail: x.data.error })
          : errorText(x);
        loadPolicy();
      } else {
        err.textContent = errorText(x);
        if (x.errcode === 'M_USER_IN_USE' || x.errcode === 'M_INVALID_USERNAME') check();
      }
      err.hidden = false;
    }
    submit.disabled = false;
  } },
  field(t('register.username'), user, userHint),
  field(t('register.password'), pass, passHint),
  field(t('register.confirm'), confirm),
  tokenField, err, submit,
  h('p', { class: 'form-alt' }, t('register.have_account'), ' ',
    h('a', { href: '#/login' }, t('register.sign_in'))));
  return frame(t('register.title'), form, rerender);
}
