// Password strength: a small, dependency-free estimate (length, variety, common patterns).
// Score 0–4; registration requires at least MIN_SCORE and MIN_LENGTH.
export const MIN_LENGTH = 8;
export const MIN_SCORE = 2;

const COMMON = ['password', 'passw0rd', 'qwerty', '123456', '12345678', '111111', 'letmein',
  'iloveyou', 'admin', 'welcome', 'monkey', 'dragon', 'football', 'abc123', 'пароль', 'йцукен'];

export function passwordScore(pw, username = '') {
  if (!pw) return 0;
  const lower = pw.toLowerCase();
  if (COMMON.some((c) => lower.includes(c)) || (username && lower.includes(username.toLowerCase())
      && username.length >= 3)) return Math.min(1, pw.length >= 12 ? 1 : 0);
  let classes = 0;
  if (/[a-zа-яё]/.test(pw)) classes += 1;
  if (/[A-ZА-ЯЁ]/.test(pw)) classes += 1;
  if (/[0-9]/.test(pw)) classes += 1;
  if (/[^A-Za-z0-9А-Яа-яЁё]/.test(pw)) classes += 1;
  const unique = new Set(pw).size;
  let score = 0;
  if (pw.length >= MIN_LENGTH) score += 1;
  if (pw.length >= 12) score += 1;
  if (pw.length >= 16) score += 1;
  if (classes >= 3) score += 1;
  if (classes >= 2 && pw.length >= 10) score += 1;
  if (unique < Math.min(5, pw.length / 2)) score -= 2;
  if (/(.)\1{3,}/.test(pw) || /(0123|1234|2345|3456|4567|5678|6789|abcd|qwer)/i.test(pw)) score -= 1;
  return Math.max(0, Math.min(4, score));
}

export function passwordProblem(pw, username = '') {
  if (!pw) return 'register.password_required';
  if (pw.length < MIN_LENGTH) return 'register.password_short';
  if (passwordScore(pw, username) < MIN_SCORE) return 'register.password_weak';
  return null;
}
