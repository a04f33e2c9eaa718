// The signed-in session's singletons, filled in by main.js: api, store, rt (realtime),
// settings, drafts, router. Views read them from here instead of importing each other.
export const ctx = {
  api: null,
  store: null,
  rt: null,
  settings: null,
  drafts: null,
  router: null,
  openRoomId: null,
};
