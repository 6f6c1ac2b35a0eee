package server

import (
	"context"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

type conversationService struct{ s *Server }

var _ ferryv1connect.ConversationServiceHandler = conversationService{}

func (h conversationService) ListConversations(ctx context.Context, req *ferryv1.ListConversationsRequest) (*ferryv1.ListConversationsResponse, error) {
	after, err := parseOptionalID("page_token", req.GetPageToken())
	if err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = 100
	}
	if size > engine.MaxConversationsPage {
		return nil, invalidf("page_size %d is over the limit of %d", size, engine.MaxConversationsPage)
	}
	infos, next, err := h.s.eng.Conversations(actorFrom(ctx), after, size)
	if err != nil {
		return nil, connectError(err)
	}
	resp := &ferryv1.ListConversationsResponse{Conversations: infosToProto(infos)}
	if next != (ulid.ULID{}) {
		resp.NextPageToken = next.String()
	}
	return resp, nil
}

func (h conversationService) GetConversation(ctx context.Context, req *ferryv1.GetConversationRequest) (*ferryv1.GetConversationResponse, error) {
	id, err := parseID("conversation_id", req.GetConversationId())
	if err != nil {
		return nil, err
	}
	info, members, vec, err := h.s.eng.Conversation(actorFrom(ctx), id)
	if err != nil {
		return nil, connectError(err)
	}
	resp := &ferryv1.GetConversationResponse{Conversation: infoToProto(&info), Vector: vectorToProto(vec)}
	for _, m := range members {
		resp.Members = append(resp.Members, &ferryv1.Member{
			UserId: m.ID.String(), Username: m.Username, DisplayName: m.DisplayName,
			Role: ferryv1.Role(m.Role), SinceSeq: m.Since,
		})
	}
	return resp, nil
}
