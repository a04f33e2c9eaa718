// Password rules and strength. What is accepted is the server's policy (GET
// /_matrix/client/v3/password_policy: MSC2000 keys plus its list of common passwords), checked
// here with the same rules as homeserver/handlers/password_policy.py: Unicode lowercase (Ll),
// uppercase (Lu), digits (Nd), a symbol is anything but a letter or a number, length in code
// points. The meter is an estimate on top: it never calls an accepted password weak, nor a
// refused one fair.
export const MIN_SCORE = 2;

/** The policy the server ships by default: used until (or if) the server's own arrives. */
export const DEFAULT_POLICY = Object.freeze({
  minLength: 8, digit: true, lower: true, upper: false, symbol: false, common: new Set(),
});

export function policyFrom(json) {
  if (!json || typeof json !== 'object' || !Object.keys(json).length) {
    return { minLength: 0, digit: false, lower: false, upper: false, symbol: false, common: new Set() };
  }
  const len = json['m.minimum_length'];
  const common = json['im.nexa.common_passwords'];
  return {
    minLength: Number.isInteger(len) && len > 0 ? len : 0,
    digit: json['m.require_digit'] === true,
    lower: json['m.require_lowercase'] === true,
    upper: json['m.require_uppercase'] === true,
    symbol: json['m.require_symbol'] === true,
    common: new Set(Array.isArray(common) ? common.map((p) => String(p).toLowerCase()) : []),
  };
}

const LOWER = /\p{Ll}/u;
const UPPER = /\p{Lu}/u;
const DIGIT = /\p{Nd}/u;
const SYMBOL = /[^\p{L}\p{N}]/u;

/** What the policy finds missing: [] when accepted; ['common'] alone for a common password;
 * otherwise some of 'length', 'digit', 'lower', 'upper', 'symbol' (in the server's order). */
export function missing(pw, policy = DEFAULT_POLICY) {
  if (policy.common.has(pw.toLowerCase())) return ['common'];
  const out = [];
  if ([...pw].length < policy.minLength) out.push('length');
  if (policy.digit && !DIGIT.test(pw)) out.push('digit');
  if (policy.lower && !LOWER.test(pw)) out.push('lower');
  if (policy.upper && !UPPER.test(pw)) out.push('upper');
  if (policy.symbol && !SYMBOL.test(pw)) out.push('symbol');
  return out;
}

const GUESSABLE = ['password', 'passw0rd', 'qwerty', '123456', 'letmein', 'iloveyou', 'admin',
  'welcome', 'monkey', 'dragon', 'football', 'abc123', 'пароль', 'йцукен'];

/** 0–4. Policy failures score at most 1; accepted passwords at least MIN_SCORE. */
export function passwordScore(pw, username = '', policy = DEFAULT_POLICY) {
  if (!pw) return 0;
  const lower = pw.toLowerCase();
  const n = [...pw].length;
  let classes = 0;
  for (const re of [LOWER, UPPER, DIGIT, SYMBOL]) if (re.test(pw)) classes += 1;
  let score = 0;
  if (n >= 8) score += 1;
  if (n >= 12) score += 1;
  if (n >= 16) score += 1;
  if (classes >= 3) score += 1;
  if (classes >= 2 && n >= 10) score += 1;
  if (new Set(pw).size < Math.min(5, n / 2)) score -= 2;
  if (/(.)\1{3,}/.test(pw) || /(0123|1234|2345|3456|4567|5678|6789|abcd|qwer)/i.test(pw)) score -= 1;
  if (GUESSABLE.some((c) => lower.includes(c))
      || (username.length >= 3 && lower.includes(username.toLowerCase()))) score -= 2;
  score = Math.max(0, Math.min(4, score));
  return missing(pw, policy).length ? Math.min(score, MIN_SCORE - 1) : Math.max(score, MIN_SCORE);
}
