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

// Token returns the request's credential value: the bearer token when one
// is set, else the cookie value.
func (r SessionRequest) Token() string {
	if r.Bearer != "" {
		return r.Bearer
	}
	return r.Cookie
}

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

// Plausible reports whether the request's one credential has the shape of
// a Directus credential, without asking anybody: a session cookie is a
// JWT (the compact form: three non-empty base64url segments joined by
// '.', the first a JSON object, so starting "eyJ"); a bearer token is such
// a JWT or a static token of RFC 6750 token68 characters
// (A-Z a-z 0-9 - . _ ~ + / then '=' padding) of at least MinStaticToken
// bytes; either at most MaxTokenBytes. Whatever fails it cannot be
// accepted by Directus, so callers refuse it as unauthorized without a
// look-up.
func (r SessionRequest) Plausible() bool {
	switch {
	case r.Cookie != "" && r.Bearer != "", r.Cookie == "" && r.Bearer == "":
		return false
	case r.Cookie != "":
		return isJWT(r.Cookie)
	}
	return isJWT(r.Bearer) || isToken68(r.Bearer)
}

// MaxTokenBytes bounds a credential's length; a Directus session JWT is
// about 350 bytes.
const MaxTokenBytes = 4096

// MinStaticToken is the shortest static bearer token accepted for a
// look-up (Directus generates 32 characters).
const MinStaticToken = 8

func isJWT(s string) bool {
	if len(s) > MaxTokenBytes || !strings.HasPrefix(s, "eyJ") {
		return false
	}
	segs, n := 1, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if n == 0 {
				return false
			}
			segs, n = segs+1, 0
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
			n++
		default:
			return false
		}
	}
	return segs == 3 && n > 0
}

func isToken68(s string) bool {
	if len(s) < MinStaticToken || len(s) > MaxTokenBytes {
		return false
	}
	pad := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '=':
			if i == 0 {
				return false
			}
			pad = true
		case pad:
			return false // '=' only at the end
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}

// ValidCookieName reports whether s is an RFC 6265 cookie-name: a non-empty
// token of printable ASCII without separators. authsvc and the broadcaster
// refuse to start with any other AUTHSVC_COOKIE_NAME / BROADCASTER_COOKIE_NAME.
func ValidCookieName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", c) {
			return false
		}
	}
	return true
}
