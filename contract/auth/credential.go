package auth

import (
	"net/http"
	"strings"
)

// CredentialFromRequest picks the one credential of an HTTP request that
// authsvc may see: the bearer token of an "Authorization: Bearer" header
// (non-browser clients), otherwise the value of the cookie named cookieName
// (DefaultCookieName when empty). The rest of the cookie jar is never
// copied. The result has no credential when the request carries neither.
func CredentialFromRequest(r *http.Request, cookieName string) SessionRequest {
	if cookieName == "" {
		cookieName = DefaultCookieName
	}
	// Directus itself prefers the bearer token over the cookie.
	if a := r.Header.Get("Authorization"); a != "" {
		if scheme, tok, ok := strings.Cut(a, " "); ok && strings.EqualFold(scheme, "Bearer") {
			if tok = strings.TrimSpace(tok); tok != "" {
				return SessionRequest{Bearer: tok}
			}
		}
	}
	if c, err := r.Cookie(cookieName); err == nil && c.Value != "" {
		return SessionRequest{Cookie: c.Value}
	}
	return SessionRequest{}
}

// Empty reports whether the request carries no credential.
func (r SessionRequest) Empty() bool { return r.Cookie == "" && r.Bearer == "" }

// ValidToken reports whether tok can be a Directus credential at all: 1 to
// 4,096 visible ASCII characters, none of which would change meaning in a
// Cookie or Authorization header (space, '"', ',', ';', '\\'). authsvc
// refuses anything else without calling Directus, since an HTTP client
// would otherwise rewrite or reject it.
func ValidToken(tok string) bool {
	if tok == "" || len(tok) > 4096 {
		return false
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if c <= ' ' || c >= 0x7f || c == '"' || c == ',' || c == ';' || c == '\\' {
			return false
		}
	}
	return true
}
